//! Code that runs inside a jail, in three kinds of process:
//!
//! * the **agent** (pid 1 of the jail's pid namespace): cloned by the spawner into fresh
//!   user, mount, pid, network, IPC and UTS namespaces; it builds the root filesystem,
//!   pivots into it, reports ready, then starts steps on request and reaps orphans.
//! * a **step init** (pid 1 of a pid namespace of its own, one per started program): mounts a
//!   fresh `/proc`, `/tmp` and `/dev/shm`, forks the program, reports when it started and how
//!   it ended, and exits; the kernel then kills everything else in the step's namespace
//!   (daemons, stopped processes, grandchildren holding pipes).
//! * the **program**: drops to uid 1000 with no capabilities, applies rlimits,
//!   `no_new_privs`, Landlock and seccomp, and `execve`s.
//!
//! All three are forks of a single-threaded process, so they may allocate.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, pivot_root, sethostname, setresgid, setresuid};

use crate::config::{
    JAIL_GID, JAIL_UID, JailConfig, ProcessSpec, RUNTIME_DIR, StepMode, WORKSPACE,
};
use crate::error::{JailError, WireError};
use crate::proto::{self, AgentReply, AgentRequest, RECORD_FINISHED, RECORD_STARTED, StepRecord};
use crate::sys;
use crate::view;

/// Stages of starting a program, reported in [`StepRecord::stage`] when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    StepMounts = 1,
    StepLandlock = 2,
    Fork = 3,
    Session = 4,
    Stdio = 5,
    Signals = 6,
    Workdir = 7,
    Rlimits = 8,
    Credentials = 9,
    NoNewPrivs = 10,
    Landlock = 11,
    Seccomp = 12,
    Exec = 13,
}

impl Stage {
    pub fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        [
            StepMounts,
            StepLandlock,
            Fork,
            Session,
            Stdio,
            Signals,
            Workdir,
            Rlimits,
            Credentials,
            NoNewPrivs,
            Landlock,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Stage::StepMounts => "mounting the step's /proc, /tmp and /dev/shm",
            Stage::StepLandlock => "building the Landlock ruleset",
            Stage::Fork => "forking the program",
            Stage::Session => "creating a session",
            Stage::Stdio => "connecting standard input and output",
            Stage::Signals => "resetting signals",
            Stage::Workdir => "entering the working directory",
            Stage::Rlimits => "setting resource limits",
            Stage::Credentials => "dropping to the sandbox user",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Landlock => "applying Landlock",
            Stage::Seccomp => "applying the seccomp filter",
            Stage::Exec => "executing the program",
        }
    }
}

/// What the spawner hands to the agent (by memory when the agent is its fork; over the
/// zygote's socket, without the filters and descriptors, when a zygote forks it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct AgentPlan {
    pub config: JailConfig,
    /// Empty host directory over which the new root is built.
    pub staging: PathBuf,
    /// The jail's own `/dev` (in `dev`, see [`build_dev`]), made by the spawner, and an empty
    /// `layers` directory.
    pub devices: PathBuf,
    /// Mount points of the mount namespace the agent starts from (the spawner's).
    pub mount_points: Vec<PathBuf>,
    /// The read-only skeleton of the root (see `skeleton`), and an empty directory to go
    /// under every read-only overlay.
    pub skeleton: PathBuf,
    pub empty: PathBuf,
    /// Read-only overlays the spawner keeps for the jail's slot (see `spawner`), one per
    /// lower directory listed here: the agent attaches `overlay_fds[i]` (a detached copy)
    /// where it would have mounted an overlay of `overlay_lowers[i]`.
    #[serde(default)]
    pub overlay_lowers: Vec<PathBuf>,
    #[serde(skip)]
    pub overlay_fds: Vec<RawFd>,
    /// Compiled seccomp filters for every program of this jail.
    #[serde(skip)]
    pub filters: Vec<seccompiler::BpfProgram>,
    /// cgroup `tasks` files (v1) the agent writes `0` to, to move itself into its cgroup.
    #[serde(skip)]
    pub cgroup_tasks: Vec<RawFd>,
    /// Highest capability number of the kernel (`/proc/sys/kernel/cap_last_cap`).
    pub cap_last_cap: u32,
    /// Bring up loopback (when the jail has a network namespace of its own making; pooled
    /// namespaces come with loopback up and cannot be configured from inside).
    pub loopback: bool,
}

impl AgentPlan {
    /// Whether `other` is this plan but for the parts that are each jail's own (its devices,
    /// overlays, cgroup files), which a zygote is sent with every fork request.
    pub(crate) fn same_for_every_jail(&self, other: &AgentPlan) -> bool {
        // Every field named, so that a new one is considered here.
        let AgentPlan {
            config,
            staging,
            devices: _,
            mount_points,
            skeleton,
            empty,
            overlay_lowers: _,
            overlay_fds: _,
            filters: _,
            cgroup_tasks: _,
            cap_last_cap,
            loopback,
        } = self;
        *config == other.config
            && *staging == other.staging
            && *mount_points == other.mount_points
            && *skeleton == other.skeleton
            && *empty == other.empty
            && *cap_last_cap == other.cap_last_cap
            && *loopback == other.loopback
    }
}

/// Entry point of the agent after `clone`. Never returns.
pub(crate) fn agent_entry(plan: &AgentPlan, ctrl: RawFd, sync: RawFd) -> ! {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent_run(plan, ctrl, sync)));
    let err = match result {
        Ok(Ok(())) => exit(0),
        Ok(Err(e)) => e,
        Err(_) => JailError::Setup {
            stage: "agent".into(),
            detail: "panicked".into(),
        },
    };
    // SAFETY: `ctrl` stays open for the agent's whole life.
    let ctrl = unsafe { BorrowedFd::borrow_raw(ctrl) };
    let _ = proto::send(ctrl, &AgentReply::Error(WireError::from(&err)), &[]);
    exit(1)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the parent's atexit handlers or
    // destructors, which belong to the process we were forked from.
    unsafe { libc::_exit(code) }
}

fn setup_err(stage: &str, what: impl std::fmt::Display, e: impl Into<io::Error>) -> JailError {
    JailError::Setup {
        stage: stage.into(),
        detail: format!("{what}: {}", e.into()),
    }
}

fn agent_run(plan: &AgentPlan, ctrl: RawFd, sync: RawFd) -> Result<(), JailError> {
    let mut keep = vec![ctrl, sync];
    keep.extend(crate::stepinit::fd());
    keep.extend_from_slice(&plan.cgroup_tasks);
    keep.extend_from_slice(&plan.overlay_fds);
    keep.sort_unstable();
    sys::close_all_except(&keep).map_err(|e| setup_err("fds", "close inherited descriptors", e))?;
    // Join the jail's cgroup first, before anything is charged to the spawner's.
    for &fd in &plan.cgroup_tasks {
        sys::write_all(fd, b"0").map_err(|e| setup_err("cgroup", "join the jail's cgroup", e))?;
        // SAFETY: our copy of the descriptor, not used again.
        unsafe { libc::close(fd) };
    }
    null_stdio().map_err(|e| setup_err("fds", "redirect stdio to /dev/null", e))?;
    // Default dispositions for every signal, so that nothing the spawner's parent ignored is
    // inherited by programs (ignored signals survive execve). Steps only change SIGPIPE.
    default_signal_dispositions();

    // Wait until the spawner has written our uid/gid maps and put us in the cgroup.
    let mut b = [0u8; 1];
    if sys::read_full(sync, &mut b).map_err(|e| setup_err("sync", "wait for the spawner", e))? != 1
    {
        exit(1);
    }
    // SAFETY: closing our copy of the sync pipe, not used again.
    unsafe { libc::close(sync) };

    // Become uid/gid 0 of the new user namespace (an unprivileged uid on the host) and drop
    // every supplementary group the spawner had.
    nix::unistd::setgroups(&[]).map_err(|e| setup_err("credentials", "setgroups", e))?;
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| setup_err("credentials", "setresgid", e))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| setup_err("credentials", "setresuid", e))?;
    // The jail dies with the spawner. (Armed only now: changing credentials clears it.
    // getppid() is 0 in our pid namespace, so a spawner that died before this point is
    // detected by its end of the control socket having closed.)
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| setup_err("credentials", "set parent-death signal", e))?;
    let mut pfd = libc::pollfd {
        fd: ctrl,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 && pfd.revents & libc::POLLHUP != 0 {
        exit(1);
    }
    unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| setup_err("namespaces", "unshare cgroup namespace", e))?;
    // A time namespace of the jail's own (its clocks keep the host's time: the offsets stay
    // zero). Otherwise every jail's /proc/self/ns/time would be the host's one inode, which a
    // program can open and lock: a channel between jails. Steps are born in it.
    // SAFETY: unshare(2) with one namespace flag; the agent is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWTIME) } < 0 {
        return Err(setup_err(
            "namespaces",
            "unshare time namespace",
            io::Error::last_os_error(),
        ));
    }
    // And entered by the agent itself, so that the agent and everything it starts share it: a
    // program started sharing the agent's memory (a last step, see `stepinit`) would stay in
    // the agent's time namespace until it executes a file (Linux 6.2 and later), or not
    // start at all (earlier kernels refuse such a clone).
    enter_own_time_namespace()
        .map_err(|e| setup_err("namespaces", "enter the time namespace", e))?;

    build_root(plan, Enter::Pivot)?;
    sethostname(&plan.config.hostname).map_err(|e| setup_err("uts", "sethostname", e))?;
    if plan.loopback {
        loopback_up().map_err(|e| setup_err("network", "bring up loopback", e))?;
    }
    let listener = match plan.config.loopback_listener {
        Some(port) => Some(
            loopback_listen(port)
                .map_err(|e| setup_err("network", format!("listen on 127.0.0.1:{port}"), e))?,
        ),
        None => None,
    };
    // Nobody in the jail may read our memory or open our /proc entries.
    nix::sys::prctl::set_dumpable(false).map_err(|e| setup_err("agent", "set_dumpable", e))?;

    let open_dir = |p: &str| {
        fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
            .map_err(|e| setup_err("workspace", format!("open {p}"), e))
    };
    let mut dirs = vec![open_dir(WORKSPACE)?];
    if plan.config.shared.is_some() {
        dirs.push(open_dir(RUNTIME_DIR)?);
    }
    // SAFETY: `ctrl` is open for the agent's whole life.
    let ctrl = unsafe { BorrowedFd::borrow_raw(ctrl) };
    let raw: Vec<RawFd> = dirs.iter().map(|d| d.as_raw_fd()).collect();
    proto::send(ctrl, &AgentReply::Ready, &raw)
        .map_err(|e| setup_err("agent", "report ready", e))?;
    drop(dirs);
    serve(plan, ctrl, listener.as_ref().map(|l| l.as_fd()))
}

/// `setns` into the time namespace this process's children are born in.
fn enter_own_time_namespace() -> io::Result<()> {
    let ns = fs::File::open("/proc/self/ns/time_for_children")?;
    // SAFETY: setns(2) with a descriptor we own and one namespace type; the agent is
    // single-threaded, as a time namespace requires.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWTIME) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn null_stdio() -> io::Result<()> {
    let null = fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The agent's request loop: starts steps, reaps every child (steps, and orphans
/// reparented to pid 1) and accepts and closes connections to the loopback listener, if
/// any. Returns (ends the jail) when the control socket closes.
fn serve(
    plan: &AgentPlan,
    ctrl: BorrowedFd<'_>,
    listener: Option<BorrowedFd<'_>>,
) -> Result<(), JailError> {
    serve_reaping::<AgentRequest>(ctrl, listener, "agent", |req, fds| {
        let AgentRequest::Start {
            spec,
            preloaded,
            last,
        } = req;
        let reply = if last {
            Err(become_last_step(
                plan,
                ctrl,
                &spec,
                preloaded,
                listener.is_some(),
                fds,
            ))
        } else {
            start_step(plan, &spec, preloaded, fds)
        };
        match reply {
            Ok(pidfd) => proto::send(ctrl, &AgentReply::Started, &[pidfd.as_raw_fd()]),
            Err(e) => proto::send(ctrl, &AgentReply::Error(WireError::from(&e)), &[]),
        }
    })
}

/// Serves the requests that arrive on `sock` with `handle` (which sends the reply) until the
/// socket closes, reaping every child that exits meanwhile (SIGCHLD through a signalfd) and
/// accepting and closing every connection to `listener` (a non-blocking listening socket).
/// For single-threaded processes that are their children's reaper (agents, zygotes).
pub(crate) fn serve_reaping<R: serde::de::DeserializeOwned>(
    sock: BorrowedFd<'_>,
    listener: Option<BorrowedFd<'_>>,
    stage: &str,
    mut handle: impl FnMut(R, Vec<OwnedFd>) -> io::Result<()>,
) -> Result<(), JailError> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| setup_err(stage, "block SIGCHLD", e))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup_err(stage, "signalfd", e))?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            // A negative descriptor is ignored by poll(2).
            libc::pollfd {
                fd: listener.map_or(-1, |l| l.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on an array we own, with its true length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(setup_err(stage, "poll", e));
        }
        if fds[1].revents != 0 {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap_all();
        }
        if let Some(l) = listener
            && fds[2].revents != 0
        {
            accept_and_close(l);
        }
        if fds[0].revents != 0 {
            let Some((req, fds)) =
                proto::recv::<R>(sock).map_err(|e| setup_err(stage, "read request", e))?
            else {
                return Ok(());
            };
            handle(req, fds).map_err(|e| setup_err(stage, "send reply", e))?;
        }
    }
}

/// Most connections accepted per wakeup, so that a flood cannot starve the agent's requests.
const ACCEPTS_PER_WAKEUP: usize = 64;

/// A non-blocking TCP listening socket on the jail's loopback (see
/// [`JailConfig::loopback_listener`]), close-on-exec (step inits close it anyway).
pub(crate) fn loopback_listen(port: u16) -> io::Result<OwnedFd> {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))?;
    l.set_nonblocking(true)?;
    Ok(l.into())
}

/// Accepts the pending connections of `listener` and closes each at once (nothing is read
/// or written: the connection succeeding is the whole answer).
fn accept_and_close(listener: BorrowedFd<'_>) {
    for _ in 0..ACCEPTS_PER_WAKEUP {
        // SAFETY: accept4 on a listening socket we own, without an address buffer.
        let c = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR | libc::ECONNABORTED) => continue,
                // EAGAIN: drained; anything else: tried again at the next wakeup.
                _ => return,
            }
        }
        // SAFETY: the descriptor accept4 just returned, ours alone.
        unsafe { libc::close(c) };
    }
}

fn reap_all() {
    loop {
        // SAFETY: waitpid with WNOHANG on any child; the status pointer may be null.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The root filesystem.

fn c(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| JailError::InvalidConfig(format!("path with NUL byte: {}", p.display())))
}

fn mount_at(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), JailError> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        setup_err(
            "rootfs",
            format!(
                "mount {} on {}",
                source
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| fstype.unwrap_or("").into()),
                target.display()
            ),
            e,
        )
    })
}

fn restrict(target: &Path, attrs: u64, recursive: bool) -> Result<(), JailError> {
    sys::mount_setattr(&c(target)?, attrs, recursive)
        .map_err(|e| setup_err("rootfs", format!("restrict mount {}", target.display()), e))
}

fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Mounts a read-only overlay of the host directory `lower` on `target`: the jail's own
/// inodes over the host's data (see `view`).
fn overlay(lower: &Path, target: &Path, empty: &Path) -> nix::Result<()> {
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(view::overlay_options(lower, empty).as_os_str()),
    )
}

/// Shows `lower` read-only at `target` through the jail's own overlay: the one the spawner
/// keeps for the slot when it offered one (attached once; closed either way), else a new one.
fn overlay_at(plan: &AgentPlan, used: &mut [bool], lower: &Path, target: &Path) -> io::Result<()> {
    let offered = plan.overlay_lowers.iter().position(|l| l == lower);
    if let Some(i) = offered
        && !used[i]
        && let Some(&fd) = plan.overlay_fds.get(i)
    {
        used[i] = true;
        let attached = c(target).is_ok_and(|t| sys::move_mount_to(fd, &t).is_ok());
        // SAFETY: our copy of the descriptor, not used again.
        unsafe { libc::close(fd) };
        if attached {
            return Ok(());
        }
    }
    overlay(lower, target, &plan.empty).map_err(io::Error::from)
}

/// Why a bound file in a directory with host mounts beneath it cannot be shown: such files
/// are copied into the skeleton (see `skeleton`) unless they are too large or not regular
/// files.
fn uncopied_file(meta: &fs::Metadata) -> io::Error {
    if !meta.is_file() {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            "a bind source must be a directory or a regular file",
        );
    }
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "files are copied into each jail and this one is larger than {} bytes: \
             bind its directory instead",
            view::FILE_COPY_MAX
        ),
    )
}

/// How a process enters the root [`build_root`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enter {
    /// `pivot_root` and detach the old root: nothing of the host stays reachable (jails).
    Pivot,
    /// `chroot`, keeping the mount namespace's real root reachable for whoever holds a
    /// descriptor of it (a zygote, whose forks leave the chroot to build their own jail).
    Chroot,
}

/// Builds the jail's root over `staging` and enters it.
pub(crate) fn build_root(plan: &AgentPlan, enter: Enter) -> Result<(), JailError> {
    let (cfg, staging, devices) = (&plan.config, plan.staging.as_path(), plan.devices.as_path());
    // Nothing mounted from here on may propagate back to the host.
    mount_at(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // The root: a read-only overlay of the skeleton the spawner made for this configuration
    // (mount points, links, generated files and copies; see `skeleton`), the jail's own inodes.
    let empty = plan.empty.as_path();
    let mut used = vec![false; plan.overlay_lowers.len()];
    overlay_at(plan, &mut used, &plan.skeleton, staging)
        .map_err(|e| setup_err("rootfs", "mount the root's overlay", e))?;
    let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    // Overlays shared by several binds (see `view`) are mounted out of sight, on a scratch
    // tmpfs over the jail's `layers` directory in the old root, which is detached with it at
    // the pivot (a detach of their own would wait for an RCU grace period each); those paths
    // are bound from them. Mounted when first needed: a directory shown whole is an overlay
    // mounted where the jail sees it.
    let layers = devices.join("layers");
    let mut layers_mounted = false;
    // Host directories overlaid so far, and where.
    let mut overlays: Vec<(PathBuf, PathBuf)> = Vec::new();
    for b in &cfg.binds {
        let meta = match fs::metadata(&b.source) {
            Ok(m) => m,
            Err(_) if b.optional => continue,
            Err(e) => {
                return Err(setup_err(
                    "rootfs",
                    format!("bind source {}", b.source.display()),
                    e,
                ));
            }
        };
        // The mount point is in the skeleton (made from the same view of the host).
        let dst = inside(staging, &b.target);
        // Shows the source at `dst`; returns whether it still needs its flags restricted.
        let mut show = || -> io::Result<bool> {
            let real = fs::canonicalize(&b.source)?;
            if meta.is_dir() && !view::has_mounts_beneath(&real, &plan.mount_points) {
                overlay_at(plan, &mut used, &real, &dst)?;
                return Ok(false);
            }
            let dir = if meta.is_dir() {
                real.as_path()
            } else {
                real.parent().unwrap_or(Path::new("/"))
            };
            let Some(root) = view::overlay_root(dir, &plan.mount_points) else {
                // From a user namespace the kernel takes no directory with host mounts beneath
                // it as an overlay layer (they are locked to it): such a directory is bound as
                // it is, with the host's inodes (see docs/security.md). (A file in it is copied
                // into the skeleton; one too large for that is refused here.)
                if !meta.is_dir() {
                    return Err(uncopied_file(&meta));
                }
                let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
                mount(Some(&b.source), &dst, None::<&str>, flags, None::<&str>)?;
                return Ok(true);
            };
            if !layers_mounted {
                mount(
                    Some("tmpfs"),
                    &layers,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("size=4k,nr_inodes=256,mode=700"),
                )?;
                layers_mounted = true;
            }
            let at = match overlays.iter().find(|(r, _)| *r == root) {
                Some((_, at)) => at.clone(),
                None => {
                    let at = layers.join(overlays.len().to_string());
                    fs::DirBuilder::new().mode(0o755).create(&at)?;
                    overlay(&root, &at, empty)?;
                    overlays.push((root.clone(), at.clone()));
                    at
                }
            };
            let inner = at.join(real.strip_prefix(&root).unwrap_or(Path::new("")));
            let flags = MsFlags::MS_BIND;
            mount(Some(&inner), &dst, None::<&str>, flags, None::<&str>)?;
            Ok(true)
        };
        match show() {
            Ok(true) => restrict(&dst, ro, true)?,
            Ok(false) => {}
            // A source the jail's unprivileged agent cannot reach is skipped if optional, and
            // so is one that appeared after its skeleton was made (no mount point yet).
            Err(e)
                if b.optional
                    && matches!(
                        e.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound
                    ) =>
            {
                continue;
            }
            Err(e) => {
                return Err(setup_err(
                    "rootfs",
                    format!("show {} at {}", b.source.display(), b.target.display()),
                    e,
                ));
            }
        }
    }
    for (i, &fd) in plan.overlay_fds.iter().enumerate() {
        if !used.get(i).copied().unwrap_or(true) {
            // SAFETY: our copy of a descriptor no mount was attached from.
            unsafe { libc::close(fd) };
        }
    }
    build_dev(staging, devices)?;
    mount_at(
        Some(Path::new("proc")),
        &staging.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    if let Some(shared) = &cfg.shared {
        // A sandbox's processes share /tmp, /dev/shm and a private runtime directory.
        let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        for (dir, size) in [("tmp", &shared.tmp), ("dev/shm", &shared.shm)] {
            mount_at(
                Some(Path::new("tmpfs")),
                &staging.join(dir),
                Some("tmpfs"),
                nosuid_nodev,
                Some(&size.mount_options(0o1777, None)),
            )?;
        }
        mount_at(
            Some(Path::new("tmpfs")),
            &inside(staging, Path::new(RUNTIME_DIR)),
            Some("tmpfs"),
            nosuid_nodev | MsFlags::MS_NOEXEC,
            Some(
                &shared
                    .runtime
                    .mount_options(0o700, Some((JAIL_UID, JAIL_GID))),
            ),
        )?;
    }
    mount_at(
        Some(Path::new("tmpfs")),
        &inside(staging, Path::new(WORKSPACE)),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        // (A zygote's user namespace has no uid 1000: its workspace is never written.)
        Some(&cfg.workspace.mount_options(
            0o755,
            (enter == Enter::Pivot).then_some((JAIL_UID, JAIL_GID)),
        )),
    )?;

    if enter == Enter::Chroot {
        restrict(staging, ro, false)?;
        nix::unistd::chdir(staging).map_err(|e| setup_err("chroot", "chdir to new root", e))?;
        nix::unistd::chroot(".").map_err(|e| setup_err("chroot", "chroot", e))?;
        return nix::unistd::chdir("/").map_err(|e| setup_err("chroot", "chdir /", e));
    }
    // Enter the new root; the old one is detached and unreachable from inside.
    nix::unistd::chdir(staging).map_err(|e| setup_err("pivot", "chdir to new root", e))?;
    pivot_root(".", ".").map_err(|e| setup_err("pivot", "pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| setup_err("pivot", "detach old root", e))?;
    nix::unistd::chdir("/").map_err(|e| setup_err("pivot", "chdir /", e))?;
    restrict(Path::new("/"), ro, false)
}

/// The generated files: the config's own, plus identity and host files unless the config
/// provides them.
pub(crate) fn generated_files(cfg: &JailConfig) -> Vec<(PathBuf, String, u32)> {
    let mut files: Vec<(PathBuf, String, u32)> = cfg
        .files
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone(), f.mode))
        .collect();
    let h = &cfg.hostname;
    let defaults = [
        (
            "/etc/passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 runner:x:{JAIL_UID}:{JAIL_GID}:runcell sandbox:/tmp:/bin/bash\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "/etc/group",
            format!("root:x:0:\nrunner:x:{JAIL_GID}:\nnogroup:x:65534:\n"),
        ),
        (
            "/etc/hosts",
            format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {h}\n"),
        ),
        ("/etc/hostname", format!("{h}\n")),
        // The only resolver a jail has: its gateway's, when the run may reach the network
        // (nothing listens there otherwise, so lookups fail at once).
        (
            "/etc/resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n".to_string(),
        ),
    ];
    for (p, contents) in defaults {
        if !files.iter().any(|(q, _, _)| q == Path::new(p)) {
            files.push((PathBuf::from(p), contents, 0o644));
        }
    }
    files
}

/// The character devices of a jail's `/dev`.
pub(crate) const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The links of a jail's `/dev` (target, name).
pub(crate) const DEV_LINKS: [(&str, &str); 5] = [
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
];

/// A minimal `/dev`: the jail's own directory made by the spawner in `devices/dev` (its own
/// [`DEVICES`] nodes, so that locks and watches on them are the jail's alone, the
/// [`DEV_LINKS`]), bound read-only in one mount, and a private devpts instance.
fn build_dev(root: &Path, devices: &Path) -> Result<(), JailError> {
    let dev = root.join("dev");
    mount_at(
        Some(&devices.join("dev")),
        &dev,
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    restrict(
        &dev,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
        false,
    )?;
    mount_at(
        Some(Path::new("devpts")),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
}

pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2) call; the descriptor is owned right away.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a new descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Steps.

/// Everything the step init and the program need, computed before forking.
struct StepPlan {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// Mount options of the private /tmp and /dev/shm; `None` for a shared step.
    private: Option<(String, String)>,
    rlimits: [(libc::__rlimit_resource_t, u64, u64); 7],
    /// Run the interpreter this jail's zygote preloaded instead of `execve` (see
    /// [`crate::zygote`]).
    preloaded: bool,
}

fn cstr(s: &str) -> Result<CString, JailError> {
    CString::new(s).map_err(|_| JailError::InvalidConfig("string with a NUL byte".into()))
}

impl StepPlan {
    fn new(spec: &ProcessSpec) -> Result<StepPlan, JailError> {
        spec.validate()?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = spec
            .env
            .iter()
            .map(|(k, v)| cstr(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let prog = &spec.argv[0];
        let candidates = if prog.contains('/') {
            vec![cstr(prog)?]
        } else {
            let path = spec
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                .unwrap_or("/usr/local/bin:/usr/bin:/bin");
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstr(&format!("{}/{prog}", d.trim_end_matches('/'))))
                .collect::<Result<Vec<_>, _>>()?
        };
        let r = &spec.rlimits;
        Ok(StepPlan {
            preloaded: false,
            candidates,
            argv,
            envp,
            cwd: c(&spec.cwd)?,
            private: match &spec.mode {
                StepMode::Private { tmp, shm } => Some((
                    tmp.mount_options(0o1777, None),
                    shm.mount_options(0o1777, None),
                )),
                StepMode::Shared => None,
            },
            rlimits: [
                (libc::RLIMIT_CPU, r.cpu_secs, r.cpu_secs + 1),
                (libc::RLIMIT_FSIZE, r.file_size_bytes, r.file_size_bytes),
                (libc::RLIMIT_NOFILE, r.open_files, r.open_files),
                (libc::RLIMIT_STACK, r.stack_bytes, r.stack_bytes),
                (libc::RLIMIT_NPROC, r.processes, r.processes),
                (
                    libc::RLIMIT_MEMLOCK,
                    r.locked_memory_bytes,
                    r.locked_memory_bytes,
                ),
                (libc::RLIMIT_CORE, 0, 0),
            ],
        })
    }
}

/// A step's plan, checked against the jail, and the five descriptors of its request (stdin,
/// stdout, stderr, status pipe, control pipe).
fn plan_step(
    plan: &AgentPlan,
    spec: &ProcessSpec,
    preloaded: bool,
    fds: &[OwnedFd],
) -> Result<(StepPlan, [RawFd; 5]), JailError> {
    if fds.len() != 5 {
        return Err(JailError::InvalidConfig(format!(
            "a start request carries 5 descriptors, got {}",
            fds.len()
        )));
    }
    let mut step = StepPlan::new(spec)?;
    if preloaded {
        crate::zygote::check_preloaded(spec)?;
        step.preloaded = true;
    }
    if step.private.is_none() && plan.config.shared.is_none() {
        return Err(JailError::InvalidConfig(
            "a shared step needs a jail prepared with shared mounts".into(),
        ));
    }
    let raw: [RawFd; 5] = [
        fds[0].as_raw_fd(),
        fds[1].as_raw_fd(),
        fds[2].as_raw_fd(),
        fds[3].as_raw_fd(),
        fds[4].as_raw_fd(),
    ];
    Ok((step, raw))
}

/// Becomes the init of the jail's last step (see [`crate::Start::last`]): private, in a jail
/// that serves no loopback listener (the agent stops serving). Once it has replied with a
/// pidfd of this process it runs the step and never returns; returns why it was refused.
fn become_last_step(
    plan: &AgentPlan,
    ctrl: BorrowedFd<'_>,
    spec: &ProcessSpec,
    preloaded: bool,
    listener: bool,
    fds: Vec<OwnedFd>,
) -> JailError {
    let (step, raw) = match plan_step(plan, spec, preloaded, &fds) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if step.private.is_none() || listener {
        return JailError::InvalidConfig(
            "a jail's last step must be private, in a jail without a loopback listener".into(),
        );
    }
    let me = match sys::pidfd_open(nix::unistd::getpid().as_raw()) {
        Ok(me) => me,
        Err(e) => return setup_err("step", "pidfd_open", e),
    };
    if proto::send(ctrl, &AgentReply::Started, &[me.as_raw_fd()]).is_err() {
        exit(1);
    }
    drop(me);
    // The step's init (this process) owns the request's descriptors from here.
    for fd in fds {
        let _ = fd.into_raw_fd();
    }
    step_init(plan, &step, raw, true)
}

/// Starts one step; returns a pidfd of its init process. Takes ownership of the five
/// descriptors of the request: stdin, stdout, stderr, status pipe, control pipe.
fn start_step(
    plan: &AgentPlan,
    spec: &ProcessSpec,
    preloaded: bool,
    fds: Vec<OwnedFd>,
) -> Result<OwnedFd, JailError> {
    let (step, raw) = plan_step(plan, spec, preloaded, &fds)?;
    let flags = if step.private.is_some() {
        libc::CLONE_NEWPID | libc::CLONE_NEWNS
    } else {
        0
    };
    // SAFETY: the agent is single-threaded.
    let pid =
        unsafe { sys::clone_fork(flags) }.map_err(|e| setup_err("step", "clone step init", e))?;
    if pid == 0 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            step_init(plan, &step, raw, false)
        }));
        let _ = r;
        exit(126);
    }
    drop(fds);
    sys::pidfd_open(pid).map_err(|e| setup_err("step", "pidfd_open", e))
}

fn record(status_fd: RawFd, r: StepRecord) {
    let _ = sys::write_all(status_fd, &r.to_bytes());
}

fn errno_of(e: impl Into<io::Error>) -> i32 {
    e.into().raw_os_error().unwrap_or(libc::EIO)
}

/// Pid 1 of the step's pid namespace. Never returns. `in_place`: this is the jail's agent,
/// pid 1 of the jail's pid namespace, running the jail's last step (its `/proc` is already
/// the one of this pid namespace).
fn step_init(plan: &AgentPlan, step: &StepPlan, fds: [RawFd; 5], in_place: bool) -> ! {
    let [stdin, stdout, stderr, status, ctl] = fds;
    // The last step's init is the step init binary once the program runs, if there is one.
    let init = if in_place {
        crate::stepinit::fd()
    } else {
        None
    };
    let mut keep: Vec<RawFd> = fds.iter().copied().chain(init).collect();
    keep.sort_unstable();
    let fail = |stage: Stage, errno: i32| -> ! {
        record(
            status,
            StepRecord {
                kind: RECORD_FINISHED,
                stage: stage as u32,
                errno,
                wait_status: 0,
                time_ns: proto::monotonic_ns(),
            },
        );
        exit(1)
    };
    if let Err(e) = sys::close_all_except(&keep) {
        fail(Stage::StepMounts, errno_of(e));
    }
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    // SIGCHLD stays blocked (it is read from a signalfd below); the program unblocks it.
    let mut chld = nix::sys::signal::SigSet::empty();
    chld.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = chld.thread_set_mask();
    // Writing the status record must not kill us if the reader is gone.
    // SAFETY: setting a signal disposition in this single-threaded process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    if let Some((tmp, shm)) = &step.private
        && let Err(e) = step_mounts(!in_place, tmp, shm)
    {
        fail(Stage::StepMounts, errno_of(e));
    }
    let ruleset = match landlock_ruleset() {
        Ok(r) => r,
        Err(_) => fail(Stage::StepLandlock, libc::EINVAL),
    };
    let (err_r, err_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(Stage::Fork, e as i32),
    };
    let t0 = proto::monotonic_ns();
    record(
        status,
        StepRecord {
            kind: RECORD_STARTED,
            time_ns: t0,
            ..Default::default()
        },
    );
    #[cfg(step_init)]
    if init.is_some() {
        let err_w = err_w.into_raw_fd();
        let program =
            Box::new(move || run_program(plan, step, [stdin, stdout, stderr], ruleset, err_w));
        let fds = crate::stepinit::InitFds {
            err: err_r.as_raw_fd(),
            status,
            control: ctl,
        };
        // SAFETY: the agent is single-threaded and holds no lock; `plan` and `step` live in
        // the frames above ours and in the heap, which this process leaves to the program.
        let e =
            unsafe { crate::stepinit::hand_over(program, fds, &[stdin, stdout, stderr, err_w]) };
        fail(Stage::Fork, errno_of(e));
    }
    // SAFETY: the step init is single-threaded.
    let child = match unsafe { libc::fork() } {
        -1 => fail(Stage::Fork, errno_of(io::Error::last_os_error())),
        0 => run_program(
            plan,
            step,
            [stdin, stdout, stderr],
            ruleset,
            err_w.as_raw_fd(),
        ),
        pid => pid,
    };
    drop(err_w);
    drop(ruleset);
    for fd in [stdin, stdout, stderr] {
        // SAFETY: closing our copies; only the program keeps these open.
        unsafe { libc::close(fd) };
    }
    // The program reports (stage, errno) if it fails before execve; EOF means it executed.
    let mut buf = [0u8; 8];
    let got = sys::read_full(err_r.as_raw_fd(), &mut buf).unwrap_or(0);
    drop(err_r);
    let (stage, errno) = if got == 8 {
        (
            u32::from_ne_bytes(buf[0..4].try_into().unwrap_or([0; 4])),
            i32::from_ne_bytes(buf[4..8].try_into().unwrap_or([0; 4])),
        )
    } else {
        (0, 0)
    };
    let wait_status = wait_for(child, ctl);
    record(
        status,
        StepRecord {
            kind: RECORD_FINISHED,
            stage,
            errno,
            wait_status,
            time_ns: proto::monotonic_ns(),
        },
    );
    // Exiting as pid 1 of a private step makes the kernel kill everything left in the step's
    // namespace; a shared step's background processes belong to the jail from here.
    exit(0)
}

/// [`program`] in the process that becomes it (forked, or started sharing memory): exits with
/// 127 if it panics before it runs the program.
fn run_program(
    plan: &AgentPlan,
    step: &StepPlan,
    stdio: [RawFd; 3],
    ruleset: RulesetCreated,
    err: RawFd,
) -> ! {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        program(plan, step, stdio, ruleset, err)
    }));
    let _ = r;
    exit(127)
}

/// Waits for the program, reaping every other child meanwhile (orphans of a private step are
/// ours to reap), and forwarding signals asked for on the control pipe to the program's
/// process group. Returns the program's wait status.
fn wait_for(child: libc::pid_t, ctl: RawFd) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok();
    let mut ctl_open = true;
    loop {
        loop {
            let mut st = 0;
            // SAFETY: waitpid without blocking, into a status we own.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r == child {
                return st;
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                return 0;
            }
            if r <= 0 {
                break;
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_ref().map_or(-1, |s| s.as_fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if ctl_open { ctl } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Without a signalfd, fall back to polling for exits every 10 ms.
        let timeout = if sfd.is_some() { -1 } else { 10 };
        // SAFETY: poll on an array we own, with its true length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0
            && let Some(s) = &sfd
        {
            while let Ok(Some(_)) = s.read_signal() {}
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 4];
            match sys::read_full(ctl, &mut b) {
                Ok(4) => {
                    let sig = i32::from_ne_bytes(b);
                    // SAFETY: kill(2) of the program's process group (it is a session
                    // leader), or of the program alone if the group is gone.
                    unsafe {
                        if libc::kill(-child, sig) < 0 {
                            libc::kill(child, sig);
                        }
                    }
                }
                _ => ctl_open = false,
            }
        }
    }
}

fn step_mounts(proc: bool, tmp_opts: &str, shm_opts: &str) -> nix::Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if proc {
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None::<&str>,
        )?;
    }
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        nosuid_nodev,
        Some(tmp_opts),
    )?;
    mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev,
        Some(shm_opts),
    )
}

/// Read and execute everywhere in the (read-only) root; full access only in the workspace,
/// `/tmp` and `/dev/shm`; read/write on the character devices. Signals and abstract unix
/// sockets may not reach outside the sandbox's domain.
fn landlock_ruleset() -> Result<RulesetCreated, landlock::RulesetError> {
    let abi = ABI::V6;
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            [WORKSPACE, "/tmp", "/dev/shm", "/dev/pts", RUNTIME_DIR],
            AccessFs::from_all(abi),
        ))?
        .add_rules(path_beneath_rules(
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty",
            ],
            AccessFs::from_file(abi),
        ))
}

/// The program's process, from fork to `execve`. Never returns.
fn program(
    plan: &AgentPlan,
    step: &StepPlan,
    stdio: [RawFd; 3],
    ruleset: RulesetCreated,
    err: RawFd,
) -> ! {
    let fail = |stage: Stage, errno: i32| -> ! {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&(stage as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&errno.to_ne_bytes());
        let _ = sys::write_all(err, &b);
        exit(127)
    };
    let last_errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };

    // A session of its own: no controlling terminal to inject input into, and a process
    // group of its own.
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        fail(Stage::Session, last_errno());
    }
    for (i, fd) in stdio.iter().enumerate() {
        let fd = match own_null(*fd) {
            Ok(fd) => fd,
            Err(e) => fail(Stage::Stdio, errno_of(e)),
        };
        // SAFETY: dup2 onto 0, 1, 2; the sources are valid descriptors received for this step
        // (or just opened); 0, 1 and 2 are taken, so nothing opened here can be one of them.
        if unsafe { libc::dup2(fd, i as RawFd) } < 0 {
            fail(Stage::Stdio, last_errno());
        }
    }
    // Every other descriptor closes at execve (the error pipe too, which signals success).
    if let Err(e) = sys::close_range(3, libc::c_uint::MAX, sys::CLOSE_RANGE_CLOEXEC) {
        fail(Stage::Stdio, errno_of(e));
    }
    if reset_signals().is_err() {
        fail(Stage::Signals, last_errno());
    }
    // Under memory pressure the kernel kills sandboxed programs before anything else. (Our
    // /proc entries belong to the host's root while we are not dumpable; nothing else runs
    // in this step yet, and execve resets dumpability anyway.)
    let _ = nix::sys::prctl::set_dumpable(true);
    if fs::write("/proc/self/oom_score_adj", b"1000").is_err() {
        fail(Stage::Signals, last_errno());
    }
    // SAFETY: chdir with a valid NUL-terminated path.
    if unsafe { libc::chdir(step.cwd.as_ptr()) } < 0 {
        fail(Stage::Workdir, last_errno());
    }
    for (res, soft, hard) in step.rlimits {
        let rl = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(res, &rl) } < 0 {
            fail(Stage::Rlimits, last_errno());
        }
    }
    if drop_privileges(plan.cap_last_cap).is_err() {
        fail(Stage::Credentials, last_errno());
    }
    // Changing credentials made us undumpable; execve would make a cold program dumpable
    // again (its /proc entries its own), so a preloaded one becomes so here.
    if step.preloaded && nix::sys::prctl::set_dumpable(true).is_err() {
        fail(Stage::Credentials, last_errno());
    }
    if nix::sys::prctl::set_no_new_privs().is_err() {
        fail(Stage::NoNewPrivs, last_errno());
    }
    match ruleset.restrict_self() {
        Ok(RestrictionStatus {
            ruleset: RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced,
            ..
        }) => {}
        Ok(_) => fail(Stage::Landlock, libc::EOPNOTSUPP),
        Err(_) => fail(Stage::Landlock, libc::EPERM),
    }
    if let Err(e) = crate::seccomp::apply(&plan.filters) {
        let errno = match e {
            seccompiler::Error::Seccomp(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            _ => libc::EINVAL,
        };
        fail(Stage::Seccomp, errno);
    }
    if step.preloaded {
        // No execve: what it would do, done by hand. Every descriptor but 0-2 closes (the
        // error pipe too, which tells the step init the program started), and the
        // interpreter's signal dispositions are restored.
        crate::zygote::run_preloaded()
    }
    let mut argv: Vec<*const libc::c_char> = step.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = step.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut errno = libc::ENOENT;
    for cand in &step.candidates {
        // SAFETY: NUL-terminated path, and argv/envp arrays of valid C strings ending in NULL,
        // all alive for the call.
        unsafe { libc::execve(cand.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = last_errno();
        // Like execvp: remember a permission problem, keep looking past missing files.
        if e != libc::ENOENT && e != libc::ENOTDIR {
            errno = e;
        }
    }
    fail(Stage::Exec, errno)
}

/// The host's null device (what a client passes for no input or discarded output) is one inode
/// for every jail and the host: a lock on it would be a channel. For it, returns the jail's own
/// `/dev/null` opened with the same access mode (close-on-exec: it is only dup2'd from);
/// returns any other descriptor as it is.
fn own_null(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: `fd` is a valid descriptor of this process.
    let st = sys::fstat(unsafe { BorrowedFd::borrow_raw(fd) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(1, 3) {
        return Ok(fd);
    }
    // SAFETY: fcntl(F_GETFL) on a valid descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated path and plain flags.
    let own = unsafe {
        libc::open(
            c"/dev/null".as_ptr(),
            (flags & libc::O_ACCMODE) | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if own < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own)
}

pub(crate) fn default_signal_dispositions() {
    /// The kernel's `struct sigaction` on x86_64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // The raw system call: the C library refuses the signals it reserves for itself (32, 33),
    // but an ignored disposition of those is inherited across execve like any other.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct for the kernel ABI and a null old action.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// Empty signal mask and default dispositions for the program: the agent blocks SIGCHLD and
/// the step init ignores SIGPIPE; every other disposition is already the default (see
/// [`default_signal_dispositions`]) or a handler, which execve resets.
fn reset_signals() -> nix::Result<()> {
    nix::sys::signal::SigSet::empty().thread_set_mask()?;
    // SAFETY: restoring one default disposition.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Empties the capability bounding and ambient sets, then becomes uid/gid 1000 with no
/// supplementary groups; leaving uid 0 clears every remaining capability, which is verified.
fn drop_privileges(last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap as libc::c_ulong {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    nix::unistd::setgroups(&[])?;
    let (g, u) = (Gid::from_raw(JAIL_GID), Uid::from_raw(JAIL_UID));
    setresgid(g, g, g)?;
    setresuid(u, u, u)?;
    // Verify: no effective, permitted or inheritable capability may survive.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two Data structs for version 3, both ours.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if data
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}
