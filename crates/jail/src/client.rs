//! The client side: a handle on a spawner process, prepared jails, and started programs.
//!
//! A [`Spawner`] may be shared by many threads. Preparing a jail ([`Spawner::prepare`]) does
//! all the expensive work (namespaces, cgroup, mounts, pivot_root) ahead of time; starting a
//! program in it ([`Jail::start`]) is one message to the jail's agent.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::cgroup::{Cgroup, CgroupRoot};
use crate::config::{CgroupLimits, JailConfig, ProcessSpec};
use crate::error::{Context, JailError};
use crate::proto::{self, AgentReply, AgentRequest, PreparedInfo, SpawnerReply, SpawnerRequest};
use crate::sandboxfs::SandboxFs;
use crate::spawner::{SPAWNER_FD, SpawnerOptions};
use crate::workspace::Workspace;
use crate::zygote::ZygoteSpec;

/// How to start the spawner process: a program that calls [`crate::spawner_main`].
#[derive(Debug, Clone)]
pub struct SpawnerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A running spawner. Cloning shares it; it exits when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Spawner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Callers take turns on the socket in the order they asked ([`Turns`]).
    turns: Turns,
    sock: Mutex<Option<OwnedFd>>,
    child: Mutex<Option<Child>>,
    cgroups: CgroupRoot,
    cgroup_version: String,
    cgroup_place: String,
    /// Group handles (their measurement files open) of ended jails, by slot, with the
    /// spawner's [`PreparedInfo::cgroup_generation`] then: the slot's next jail takes its
    /// handle while the generation is the same, instead of opening the files again (seven
    /// `open`s per execution). At most [`KEPT_HANDLES`].
    kept_groups: Mutex<HashMap<u32, KeptHandle>>,
    /// The jail configurations sent to the spawner, as it holds them.
    configs: Mutex<proto::SentConfigs>,
}

/// An ended jail's group handle and the spawner's generation of the group then.
type KeptHandle = (u64, Box<dyn Cgroup>);

/// Group handles kept for later jails of their slots (a slot goes to another jail once 16
/// others were freed after it: this covers a pool's turnover), about 7 descriptors each.
const KEPT_HANDLES: usize = 32;

impl Inner {
    /// The handle an earlier jail of `slot` left, if the spawner's group is still that one.
    fn take_kept_group(&self, slot: u32, generation: u64) -> Option<Box<dyn Cgroup>> {
        let mut kept = self.kept_groups.lock().unwrap_or_else(|p| p.into_inner());
        match kept.remove(&slot) {
            Some((g, group)) if g == generation && generation != 0 => Some(group),
            _ => None,
        }
    }

    fn keep_group(&self, slot: u32, generation: u64, group: Box<dyn Cgroup>) {
        if generation == 0 {
            return;
        }
        let mut kept = self.kept_groups.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= KEPT_HANDLES && !kept.contains_key(&slot) {
            // Any one: the spawner hands out slots in turn, so none is likelier next.
            if let Some(&other) = kept.keys().next() {
                kept.remove(&other);
            }
        }
        kept.insert(slot, (generation, group));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the socket tells the spawner to destroy its jails and exit.
        drop(self.sock.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.wait();
        }
    }
}

/// The spawner's answer to one request, with the descriptors it sent.
type Reply = Result<(SpawnerReply, Vec<OwnedFd>), JailError>;

/// A ticket lock: the spawner's callers are served in the order they asked.
///
/// The spawner answers one request at a time, and a `Mutex` around its socket is not fair:
/// a thread that calls in a loop (a pool's filler, preparing jail after jail) takes it again
/// before a woken waiter can. Under load that starved the reaper, whose destroy requests
/// waited while prepared jails piled up until every slot was taken.
#[derive(Debug, Default)]
struct Turns {
    /// (next ticket to hand out, ticket being served)
    state: Mutex<(u64, u64)>,
    next: Condvar,
}

/// The caller's turn; the next one's begins when it is dropped.
struct Turn<'a>(&'a Turns);

impl Turns {
    fn take(&self) -> Turn<'_> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = s.0;
        s.0 += 1;
        while s.1 != ticket {
            s = self.next.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        self.0.next.notify_all();
    }
}

impl Spawner {
    /// Starts a spawner process with a clean environment.
    pub fn launch(cmd: &SpawnerCommand, opts: &SpawnerOptions) -> Result<Spawner, JailError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NotRoot(
                "run runcell as root (it creates namespaces, cgroups and uid maps)".into(),
            ));
        }
        let (ours, theirs) = proto::seqpacket_pair().ctx(|| "socketpair".into())?;
        let their_fd: RawFd = theirs.as_raw_fd();
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env_clear()
            .envs(opts.to_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Ok(v) = std::env::var("RUST_BACKTRACE") {
            command.env("RUST_BACKTRACE", v);
        }
        // SAFETY: the closure only calls dup2 and fcntl, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if their_fd != SPAWNER_FD && libc::dup2(their_fd, SPAWNER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::fcntl(SPAWNER_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .ctx(|| format!("start spawner {}", cmd.program.display()))?;
        drop(theirs);
        let hello = proto::recv::<SpawnerReply>(ours.as_fd()).ctx(|| "spawner hello".into())?;
        let (cgroup_version, cgroup_place) = match hello {
            Some((
                SpawnerReply::Hello {
                    cgroup,
                    cgroup_place,
                },
                _,
            )) => (cgroup, cgroup_place),
            Some((SpawnerReply::Error(e), _)) => return Err(e.into()),
            Some(_) => return Err(JailError::Spawner("unexpected greeting".into())),
            None => {
                return Err(JailError::Spawner(format!(
                    "{} exited before it was ready",
                    cmd.program.display()
                )));
            }
        };
        let cgroups = CgroupRoot::detect().ctx(|| "find cgroups".into())?;
        Ok(Spawner {
            inner: Arc::new(Inner {
                turns: Turns::default(),
                sock: Mutex::new(Some(ours)),
                child: Mutex::new(Some(child)),
                cgroups,
                cgroup_version,
                cgroup_place,
                kept_groups: Mutex::new(HashMap::new()),
                configs: Mutex::new(proto::SentConfigs::default()),
            }),
        })
    }

    /// Pid of the spawner process.
    pub fn pid(&self) -> Option<u32> {
        self.inner
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.id())
    }

    /// "v1" or "v2".
    pub fn cgroup_version(&self) -> &str {
        &self.inner.cgroup_version
    }

    /// Which hierarchy jails use and where their groups live, for the operator:
    /// `cgroup v2 at /sys/fs/cgroup/runcell`.
    pub fn cgroup_place(&self) -> &str {
        &self.inner.cgroup_place
    }

    fn call(&self, req: &SpawnerRequest) -> Result<(SpawnerReply, Vec<OwnedFd>), JailError> {
        self.calls(|call| call(req))
    }

    /// Runs `f` in one turn on the spawner: every request it makes through the function it is
    /// given is answered before another caller's.
    fn calls<T>(&self, f: impl FnOnce(&dyn Fn(&SpawnerRequest) -> Reply) -> T) -> T {
        let _turn = self.inner.turns.take();
        let guard = self.inner.sock.lock().unwrap_or_else(|p| p.into_inner());
        let call = |req: &SpawnerRequest| -> Reply {
            let sock = guard
                .as_ref()
                .ok_or_else(|| JailError::Spawner("spawner is shut down".into()))?;
            proto::send(sock.as_fd(), req, &[]).ctx(|| "send to spawner".into())?;
            match proto::recv::<SpawnerReply>(sock.as_fd()).ctx(|| "read from spawner".into())? {
                Some((SpawnerReply::Error(e), _)) => Err(e.into()),
                Some(r) => Ok(r),
                None => Err(JailError::Spawner("the spawner exited".into())),
            }
        };
        f(&call)
    }

    /// Prepares a jail: namespaces, cgroup with `limits`, root filesystem, workspace. The jail
    /// is ready to [`Jail::start`] programs and is destroyed when dropped.
    pub fn prepare(&self, config: &JailConfig, limits: &CgroupLimits) -> Result<Jail, JailError> {
        self.prepare_in(None, config, limits)
    }

    /// Starts a zygote (see [`crate::zygote`]): an interpreter initialized once in a root
    /// like the jails' own, whose forks become jails ([`Spawner::prepare_in`]). Returns its
    /// id and the interpreter's version.
    pub fn start_zygote(&self, spec: &ZygoteSpec) -> Result<(u64, String), JailError> {
        spec.validate()?;
        let req = SpawnerRequest::StartZygote { spec: spec.clone() };
        match self.call(&req)? {
            (SpawnerReply::Zygote { id, version }, _) => Ok((id, version)),
            _ => Err(JailError::Spawner(
                "unexpected reply to start a zygote".into(),
            )),
        }
    }

    /// Stops a zygote: it forks no more jails, and ends when the last one it forked is
    /// destroyed (they cannot outlive it).
    pub fn stop_zygote(&self, id: u64) -> Result<(), JailError> {
        match self.call(&SpawnerRequest::StopZygote { id })? {
            (SpawnerReply::Destroyed, _) => Ok(()),
            _ => Err(JailError::Spawner(
                "unexpected reply to stop a zygote".into(),
            )),
        }
    }

    /// Like [`Spawner::prepare`], the jail's agent forked from `zygote` when one is given:
    /// its programs may then be started with [`Jail::start_preloaded`].
    pub fn prepare_in(
        &self,
        zygote: Option<u64>,
        config: &JailConfig,
        limits: &CgroupLimits,
    ) -> Result<Jail, JailError> {
        let pending = self.request_jail(zygote, config, limits)?;
        let jail = self.jail_when_ready(pending, config)?;
        // The slot's group may have held earlier jails: what this one is told counts from
        // here (dropping the jail on an error destroys it).
        jail.cgroup
            .restart_counters()
            .ctx(|| "read cgroup stats".into())?;
        Ok(jail)
    }

    /// [`Spawner::prepare_in`] and [`Jail::start_with`] in one go: the start request is
    /// queued on the agent's control socket while the agent still builds the jail's root,
    /// so that the agent goes on to it without waiting for this thread, and both answers
    /// come back together (two hand-offs between processes fewer). The program starts only
    /// once the jail is ready, exactly as it would have; its measurements count from the
    /// moment the jail's counters were restarted, just before the request.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_and_start(
        &self,
        zygote: Option<u64>,
        config: &JailConfig,
        limits: &CgroupLimits,
        how: Start,
        spec: &ProcessSpec,
        stdin: StdinSource,
        stdout: OutputTarget,
        stderr: OutputTarget,
    ) -> Result<(Jail, Process), JailError> {
        spec.validate()?;
        let pending = self.request_jail(zygote, config, limits)?;
        let queued = pending
            .cgroup
            .restart_counters()
            .ctx(|| "read cgroup stats".into())
            .and_then(|()| send_start(pending.ctrl.as_fd(), how, spec, stdin, stdout, stderr));
        let queued = match queued {
            Ok(q) => q,
            Err(e) => {
                // An agent that failed already has closed its socket (the request found no
                // reader): its own report says why.
                let e = match crate::spawner::wait_ready(pending.ctrl.as_fd()) {
                    Err(why) => why,
                    Ok(_) => e,
                };
                return Err(self.abandon(pending.info.jail, e));
            }
        };
        let jail = self.jail_when_ready(pending, config)?;
        let process = {
            let ctrl = jail.ctrl.lock().unwrap_or_else(|p| p.into_inner());
            jail.started(ctrl.as_fd(), queued, crate::cgroup::CgroupStats::default())?
        };
        Ok((jail, process))
    }

    /// Asks the spawner for a jail: what it answered, with the jail's control socket, its
    /// agent and a handle on its group. The agent builds the jail's root meanwhile.
    fn request_jail(
        &self,
        zygote: Option<u64>,
        config: &JailConfig,
        limits: &CgroupLimits,
    ) -> Result<PendingJail, JailError> {
        limits.validate()?;
        let (reply, fds) = self.calls(|call| {
            let config = self
                .inner
                .configs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reference(config)?;
            call(&SpawnerRequest::Prepare {
                config,
                limits: *limits,
                zygote,
            })
        })?;
        let SpawnerReply::Prepared(info) = reply else {
            return Err(JailError::Spawner("unexpected reply to prepare".into()));
        };
        let mut fds = fds.into_iter();
        let (Some(ctrl), Some(agent), None) = (fds.next(), fds.next(), fds.next()) else {
            return Err(JailError::Spawner(
                "prepare reply without descriptors".into(),
            ));
        };
        let cgroup = match self
            .inner
            .take_kept_group(info.slot, info.cgroup_generation)
        {
            Some(group) => group,
            None => match self.inner.cgroups.open(&info.cgroup) {
                Ok(group) => group,
                Err(e) => return Err(self.abandon(info.jail, JailError::io("open cgroup", e))),
            },
        };
        Ok(PendingJail {
            info,
            ctrl,
            agent,
            cgroup,
            limits: *limits,
        })
    }

    /// Destroys a jail that never became a [`Jail`] (the spawner kills it and frees its
    /// slot); returns `e`.
    fn abandon(&self, jail: u64, e: JailError) -> JailError {
        let _ = self.call(&SpawnerRequest::Destroy { jail });
        e
    }

    /// Waits for the agent to report the jail ready (it builds the root outside the
    /// spawner's turn); a jail that does not become ready is destroyed before the error is
    /// returned.
    fn jail_when_ready(&self, p: PendingJail, config: &JailConfig) -> Result<Jail, JailError> {
        let jail_id = p.info.jail;
        let dirs =
            crate::spawner::wait_ready(p.ctrl.as_fd()).map_err(|e| self.abandon(jail_id, e))?;
        let expected = if config.shared.is_some() { 2 } else { 1 };
        if dirs.len() != expected {
            return Err(self.abandon(
                jail_id,
                JailError::Spawner("the jail's agent sent the wrong descriptors".into()),
            ));
        }
        let mut dirs = dirs.into_iter();
        let ws = dirs.next().expect("counted above");
        let runtime = dirs
            .next()
            .map(|fd| Workspace::new(fd, p.info.program_id, p.info.program_id));
        Ok(Jail {
            spawner: self.clone(),
            workspace: Workspace::new(ws, p.info.program_id, p.info.program_id),
            runtime,
            info: p.info,
            ctrl: Mutex::new(p.ctrl),
            agent: p.agent,
            cgroup: GroupHandle(Some(p.cgroup)),
            destroyed: std::sync::atomic::AtomicBool::new(false),
            frozen: Mutex::new(Frozen::default()),
            // What the spawner made the group with.
            limits: Mutex::new(Some(p.limits)),
        })
    }
}

/// A jail the spawner prepared whose agent has not reported ready yet.
struct PendingJail {
    info: PreparedInfo,
    ctrl: OwnedFd,
    agent: OwnedFd,
    cgroup: Box<dyn Cgroup>,
    limits: CgroupLimits,
}

/// A prepared jail. Dropping it destroys it: every process in it is killed, its cgroup removed
/// and its workspace freed.
#[derive(Debug)]
pub struct Jail {
    spawner: Spawner,
    info: PreparedInfo,
    ctrl: Mutex<OwnedFd>,
    agent: OwnedFd,
    workspace: Workspace,
    runtime: Option<Workspace>,
    pub(crate) cgroup: GroupHandle,
    destroyed: std::sync::atomic::AtomicBool,
    /// How long the jail has been frozen in all, and since when it is frozen now (monotonic
    /// ns): the wall-time limit of a program does not count while its jail is frozen.
    frozen: Mutex<Frozen>,
    /// The limits the group has now, so that setting limits writes only what changes (each
    /// write a cgroup file opened and written; a CPU quota's walks every group); `None`
    /// after a write failed: the next one writes them all.
    limits: Mutex<Option<CgroupLimits>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Frozen {
    total_ns: u64,
    since_ns: Option<u64>,
}

/// Standard input of a started program.
#[derive(Debug)]
pub enum StdinSource {
    /// `/dev/null`.
    Null,
    /// These bytes, from a sealed in-memory file: the program can read at its own pace or not
    /// at all, and nobody blocks on it.
    Bytes(Vec<u8>),
    /// A descriptor the caller provides (for example the read end of a pipe).
    Fd(OwnedFd),
}

/// Standard output or error of a started program.
#[derive(Debug)]
pub enum OutputTarget {
    /// A pipe whose read end is in [`Process::stdout`] / [`Process::stderr`].
    Pipe,
    /// `/dev/null`.
    Null,
    /// A descriptor the caller provides.
    Fd(OwnedFd),
}

/// How [`Jail::start_with`] starts a program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Start {
    /// Run the interpreter the jail's zygote preloaded instead of executing `argv[0]` (see
    /// [`Jail::start_preloaded`]).
    pub preloaded: bool,
    /// The jail's last program (a private step, in a jail without a loopback listener): the
    /// jail's agent, pid 1 of the jail's pid namespace, becomes the step's init itself instead
    /// of cloning one with a pid and mount namespace of its own, so a one-shot run costs one
    /// process, one fork and one namespace teardown less. The program sees the same thing
    /// (a child of pid 1, fresh `/tmp` and `/dev/shm`, a `/proc` of its own pid namespace;
    /// its own pid is 2 unless earlier steps of the jail took pids); when it ends, the agent
    /// reports it and exits, and the kernel kills everything left in the jail. Nothing can be
    /// started in the jail afterwards.
    pub last: bool,
}

/// A program started in a jail.
#[derive(Debug)]
pub struct Process {
    /// pidfd of the step's init process (it exits once the program and everything it
    /// started are dead).
    pub(crate) pidfd: OwnedFd,
    pub(crate) status: OwnedFd,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub(crate) baseline: crate::cgroup::CgroupStats,
    pub(crate) sent_ns: u64,
    pub(crate) killer: Killer,
    /// Set by [`Jail::hand_off`]: the run began at `sent_ns`, not when the step started.
    pub(crate) handed_off: bool,
    /// [`Jail::frozen_ns`] at `sent_ns`.
    pub(crate) frozen_base_ns: u64,
}

impl Process {
    /// Whether the step has already ended (its init's pidfd is readable).
    pub fn has_exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, without waiting.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n != 0
    }

    /// Kills the program (for a private step, everything it started too).
    pub fn kill(&self) -> io::Result<()> {
        self.killer.kill()
    }

    /// Sends `sig` to the program's process group.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        self.killer.signal(sig)
    }

    /// A handle that signals or kills this program from any thread, also while it is being
    /// supervised.
    pub fn killer(&self) -> io::Result<Killer> {
        Ok(self.killer.clone())
    }
}

/// Signals or kills one started program. Cheap to clone; harmless after the program has ended
/// (the pidfd names that process only, never a reused pid).
#[derive(Debug, Clone)]
pub struct Killer {
    /// pidfd of the step's init.
    pidfd: Arc<OwnedFd>,
    /// Write end of the step init's control pipe.
    ctl: Arc<OwnedFd>,
    shared: bool,
    /// Set once any clone has sent SIGKILL: a SIGKILL death is then ours, not the kernel's.
    kill_sent: Arc<AtomicBool>,
}

impl Killer {
    /// A private step: SIGKILL to its init, which takes everything in its pid namespace with
    /// it. A shared step: SIGKILL to the program's process group.
    pub fn kill(&self) -> io::Result<()> {
        self.kill_sent.store(true, Ordering::SeqCst);
        if self.shared {
            return self.signal(libc::SIGKILL);
        }
        match crate::sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// Whether the program is a shared step (a sandbox's long-lived process).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether SIGKILL was sent through this handle or a clone of it (a kill, an interrupt's
    /// last resort, a deleted context).
    pub fn kill_sent(&self) -> bool {
        self.kill_sent.load(Ordering::SeqCst)
    }

    /// Sends `sig` to the program's process group (through its step init).
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        if sig == libc::SIGKILL {
            self.kill_sent.store(true, Ordering::SeqCst);
        }
        match crate::sys::write_all(self.ctl.as_raw_fd(), &sig.to_ne_bytes()) {
            // The step has ended: nothing left to signal.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(()),
            r => r,
        }
    }
}

/// A start request sent to a jail's agent: this side of the program's pipes.
struct QueuedStart {
    out_r: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
    status_r: OwnedFd,
    ctl_w: OwnedFd,
    shared: bool,
    sent_ns: u64,
}

/// Sends the agent on `ctrl` the request to start `spec` (see [`Jail::start_with`]), with
/// the program's ends of its standard streams, status pipe and control pipe.
fn send_start(
    ctrl: BorrowedFd<'_>,
    how: Start,
    spec: &ProcessSpec,
    stdin: StdinSource,
    stdout: OutputTarget,
    stderr: OutputTarget,
) -> Result<QueuedStart, JailError> {
    let stdin = match stdin {
        StdinSource::Null => dev_null(),
        StdinSource::Bytes(b) => sealed_memfd(&b),
        StdinSource::Fd(fd) => Ok(fd),
    }
    .ctx(|| "prepare stdin".into())?;
    let (out_r, out_w) = output(stdout).ctx(|| "prepare stdout".into())?;
    let (err_r, err_w) = output(stderr).ctx(|| "prepare stderr".into())?;
    let (status_r, status_w) = pipe().ctx(|| "status pipe".into())?;
    let (ctl_r, ctl_w) = pipe().ctx(|| "control pipe".into())?;
    let sent_ns = proto::monotonic_ns();
    proto::send(
        ctrl,
        &AgentRequest::Start {
            spec: Box::new(spec.clone()),
            preloaded: how.preloaded,
            last: how.last,
        },
        &[
            stdin.as_raw_fd(),
            out_w.as_raw_fd(),
            err_w.as_raw_fd(),
            status_w.as_raw_fd(),
            ctl_r.as_raw_fd(),
        ],
    )
    .ctx(|| "send start request to the jail".into())?;
    Ok(QueuedStart {
        out_r,
        err_r,
        status_r,
        ctl_w,
        shared: spec.mode == crate::config::StepMode::Shared,
        sent_ns,
    })
}

fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        c"stdin",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(io::Error::from)?;
    crate::sys::write_all(fd.as_raw_fd(), data)?;
    // SAFETY: lseek on our own descriptor.
    if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn output(target: OutputTarget) -> io::Result<(Option<OwnedFd>, OwnedFd)> {
    Ok(match target {
        OutputTarget::Pipe => {
            let (r, w) = pipe()?;
            (Some(r), w)
        }
        OutputTarget::Null => (None, dev_null()?),
        OutputTarget::Fd(fd) => (None, fd),
    })
}

impl Jail {
    /// The jail's slot number (also its cgroup name's suffix).
    /// Whether the jail's agent is still running. It ends only when the jail is destroyed,
    /// or when the process it depends on dies (the spawner, or the zygote it was forked from:
    /// then everything in the jail died with it).
    pub fn is_alive(&self) -> bool {
        !self.ends_within(Duration::ZERO)
    }

    /// Whether the jail's agent ends within `timeout` (see [`Jail::is_alive`]).
    pub fn ends_within(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.agent.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }

    pub fn slot(&self) -> u32 {
        self.info.slot
    }

    /// Host uid (and gid) of the program inside this jail.
    pub fn program_host_id(&self) -> u32 {
        self.info.program_id
    }

    /// Name of the jail's cgroup under the `runcell` parent.
    pub fn cgroup_name(&self) -> &str {
        &self.info.cgroup
    }

    /// The workspace, for writing sources and reading outputs safely.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// The private runtime directory ([`crate::RUNTIME_DIR`] inside) of a jail with shared
    /// mounts.
    pub fn runtime_dir(&self) -> Option<&Workspace> {
        self.runtime.as_ref()
    }

    /// The jail's whole filesystem view, exactly as a program in it sees it (the jail's root
    /// in the jail's mount namespace), for acting on files as the jail program's user. Meant
    /// for one request at a time: see [`SandboxFs`].
    pub fn filesystem(&self) -> Result<SandboxFs, JailError> {
        if self.is_destroyed() {
            return Err(JailError::Spawner("the jail has been destroyed".into()));
        }
        let gone = || JailError::Spawner("the jail's agent is gone".into());
        let pid = crate::sys::pidfd_pid(self.agent.as_fd())
            .ctx(|| "read the jail agent's pid".into())?
            .ok_or_else(gone)?;
        let root: OwnedFd = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(format!("/proc/{pid}/root"))
            .ctx(|| "open the jail's root".into())?
            .into();
        // The pid was read before the open: if the agent is still alive now, the pid was
        // still its own when the root was opened (a pid is not reused while its process
        // lives).
        crate::sys::pidfd_send_signal(self.agent.as_fd(), 0).map_err(|_| gone())?;
        let program = self.info.program_id;
        let agent = program
            .checked_sub(1)
            .ok_or_else(|| JailError::Spawner("invalid program id".into()))?;
        Ok(SandboxFs::new(root, program, agent))
    }

    /// Changes the jail's kernel-enforced limits (between steps, or for a sandbox's budget).
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), JailError> {
        limits.validate()?;
        let mut now = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let r = match *now {
            Some(from) => self.cgroup.change_limits(&from, limits),
            None => self.cgroup.set_limits(limits),
        };
        *now = r.is_ok().then_some(*limits);
        r.ctx(|| "set cgroup limits".into())
    }

    /// The lowest CPU weight, for a jail being torn down (see [`CgroupLimits::background`]).
    fn yield_cpu(&self) {
        let mut now = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some_and(|l| l.background) {
            return;
        }
        let r = self.cgroup.set_cpu_weight(true);
        *now = match (r, *now) {
            (Ok(()), Some(l)) => Some(CgroupLimits {
                background: true,
                ..l
            }),
            _ => None,
        };
    }

    /// The jail's network namespace, for the host to configure and make sockets in (an
    /// egress gateway's resolver and stand-in addresses).
    pub fn network(&self) -> io::Result<crate::netns::JailNet> {
        if self.is_destroyed() {
            return Err(io::Error::other("the jail has been destroyed"));
        }
        Ok(crate::netns::JailNet::new(self.agent.try_clone()?))
    }

    /// Connects to a TCP port on the jail's own loopback (where a program inside listens),
    /// from the host. The socket is made by a short-lived thread that enters only the jail's
    /// network namespace, so no other thread of the caller ever changes namespace.
    pub fn connect_tcp(&self, port: u16, timeout: Duration) -> io::Result<std::net::TcpStream> {
        crate::netns::JailNet::new(self.agent.try_clone()?).connect_tcp(port, timeout)
    }

    /// Freezes every process of the jail (they keep their memory and use no CPU until
    /// thawed) or thaws them; returns once the kernel reports it done. Destroying a frozen
    /// jail works as usual.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), JailError> {
        // Counted as frozen from the request to freeze until the thaw is done (a little more
        // than the processes really were, never less).
        let mut f = self.frozen.lock().unwrap_or_else(|p| p.into_inner());
        if frozen && f.since_ns.is_none() {
            f.since_ns = Some(proto::monotonic_ns());
        }
        let r = self.cgroup.set_frozen(frozen).ctx(|| {
            if frozen {
                "freeze the jail"
            } else {
                "thaw the jail"
            }
            .into()
        });
        // Frozen after a freeze, and still after a failed thaw; not after a thaw, nor after a
        // failed freeze (its caller thaws).
        let frozen_now = if r.is_ok() { frozen } else { !frozen };
        if !frozen_now && let Some(since) = f.since_ns.take() {
            f.total_ns += proto::monotonic_ns().saturating_sub(since);
        }
        r
    }

    /// How long the jail has been frozen since it was made, up to `now` (monotonic ns).
    pub(crate) fn frozen_ns(&self, now: u64) -> u64 {
        let f = self.frozen.lock().unwrap_or_else(|p| p.into_inner());
        f.total_ns + f.since_ns.map_or(0, |s| now.saturating_sub(s))
    }

    /// Current cgroup measurements of the whole jail.
    pub fn stats(&self) -> Result<crate::cgroup::CgroupStats, JailError> {
        self.cgroup.stats().ctx(|| "read cgroup stats".into())
    }

    /// Starts a program. The program's memory peak is measured from here.
    pub fn start(
        &self,
        spec: &ProcessSpec,
        stdin: StdinSource,
        stdout: OutputTarget,
        stderr: OutputTarget,
    ) -> Result<Process, JailError> {
        self.start_with(Start::default(), spec, stdin, stdout, stderr)
    }

    /// Like [`Jail::start`], but where the program would be executed, the interpreter that
    /// the jail's zygote preloaded runs its command instead (`spec.argv` must be the zygote's
    /// command; the jail must come from [`Spawner::prepare_in`] with that zygote).
    pub fn start_preloaded(
        &self,
        spec: &ProcessSpec,
        stdin: StdinSource,
        stdout: OutputTarget,
        stderr: OutputTarget,
    ) -> Result<Process, JailError> {
        let how = Start {
            preloaded: true,
            ..Start::default()
        };
        self.start_with(how, spec, stdin, stdout, stderr)
    }

    /// Starts a program as `how` says (see [`Start`]).
    pub fn start_with(
        &self,
        how: Start,
        spec: &ProcessSpec,
        stdin: StdinSource,
        stdout: OutputTarget,
        stderr: OutputTarget,
    ) -> Result<Process, JailError> {
        spec.validate()?;
        self.cgroup
            .reset_peak()
            .ctx(|| "reset memory peak".into())?;
        let baseline = self.cgroup.stats().ctx(|| "read cgroup stats".into())?;
        let ctrl = self.ctrl.lock().unwrap_or_else(|p| p.into_inner());
        let queued = send_start(ctrl.as_fd(), how, spec, stdin, stdout, stderr)?;
        self.started(ctrl.as_fd(), queued, baseline)
    }

    /// The agent's answer to a start request sent on `ctrl` (held locked by the caller).
    fn started(
        &self,
        ctrl: BorrowedFd<'_>,
        q: QueuedStart,
        baseline: crate::cgroup::CgroupStats,
    ) -> Result<Process, JailError> {
        let reply = proto::recv::<AgentReply>(ctrl).ctx(|| "read start reply".into())?;
        match reply {
            Some((AgentReply::Started, mut fds)) if fds.len() == 1 => {
                let pidfd = fds.remove(0);
                let killer = Killer {
                    pidfd: Arc::new(pidfd.try_clone().ctx(|| "dup pidfd".into())?),
                    ctl: Arc::new(q.ctl_w),
                    shared: q.shared,
                    kill_sent: Arc::new(AtomicBool::new(false)),
                };
                Ok(Process {
                    pidfd,
                    status: q.status_r,
                    stdout: q.out_r,
                    stderr: q.err_r,
                    baseline,
                    sent_ns: q.sent_ns,
                    killer,
                    handed_off: false,
                    frozen_base_ns: self.frozen_ns(q.sent_ns),
                })
            }
            Some((AgentReply::Error(e), _)) => Err(e.into()),
            Some(_) => Err(JailError::Spawner("unexpected reply from the jail".into())),
            None => Err(JailError::Spawner("the jail's agent is gone".into())),
        }
    }

    /// Hands a program started ahead of its run (a warm interpreter waiting for its code) to
    /// that run: its measurements (CPU time, memory peak, wall time) and its wall-time limit
    /// start now, as if it had been started now.
    pub fn hand_off(&self, process: &mut Process) -> Result<(), JailError> {
        self.cgroup
            .reset_peak()
            .ctx(|| "reset memory peak".into())?;
        process.baseline = self.cgroup.stats().ctx(|| "read cgroup stats".into())?;
        process.sent_ns = proto::monotonic_ns();
        process.frozen_base_ns = self.frozen_ns(process.sent_ns);
        process.handed_off = true;
        Ok(())
    }

    /// Kills the jail's agent, and with it every process of the jail, without waiting for
    /// the spawner: their teardown starts now (yielding to running programs), and
    /// [`Jail::destroy`] later frees the slot. A jail that is queued for destruction holds no
    /// running process meanwhile.
    pub fn kill(&self) {
        if self.destroyed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.yield_cpu();
        let _ = crate::sys::pidfd_send_signal(self.agent.as_fd(), libc::SIGKILL);
    }

    /// Destroys the jail now and waits until nothing of it is left (processes, cgroup).
    pub fn destroy(self) -> Result<(), JailError> {
        self.shutdown()
    }

    /// Destroys jails as [`Jail::destroy`] does, those of one spawner in one turn on it: a
    /// caller that destroys what others used (a pool's reaper) keeps up with any number of
    /// threads preparing jails, since each turn clears everything queued until then. Every
    /// jail is killed before the first is waited for. Returns the first error.
    pub fn destroy_all(jails: Vec<Jail>) -> Result<(), JailError> {
        Self::destroy_each(&jails.iter().collect::<Vec<_>>())
    }

    /// Kills the jails and hands them to their spawners, which free each one's slot and group
    /// once its processes are gone, serving other callers meanwhile; returns without waiting
    /// for that (a pool's reaper: what it releases is never used again). Every jail of one
    /// spawner goes in one request. A jail already destroyed is skipped. Returns the first
    /// error. Dropping the spawner still waits for every teardown.
    pub fn release_all(jails: Vec<Jail>) -> Result<(), JailError> {
        let refs: Vec<&Jail> = jails.iter().collect();
        Self::by_spawner(&refs, |spawner, ours| {
            let ids: Vec<u64> = ours
                .iter()
                .filter(|j| !j.destroyed.swap(true, Ordering::SeqCst))
                .map(|j| j.info.jail)
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            match spawner.call(&SpawnerRequest::Release { jails: ids }) {
                Ok((SpawnerReply::Destroyed, _)) => Ok(()),
                Ok(_) => Err(JailError::Spawner("unexpected reply to release".into())),
                Err(e) => Err(e),
            }
        })
    }

    /// Kills every jail first (so that each dies even if the spawner is slow to answer), then
    /// asks each one's spawner to destroy it, those of one spawner in one turn. A jail already
    /// destroyed is skipped. Returns the first error.
    fn destroy_each(jails: &[&Jail]) -> Result<(), JailError> {
        Self::by_spawner(jails, |spawner, ours| {
            let mut first = Ok(());
            spawner.calls(|call| {
                for j in ours {
                    if j.destroyed.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    let r = match call(&SpawnerRequest::Destroy { jail: j.info.jail }) {
                        Ok((SpawnerReply::Destroyed, _)) => Ok(()),
                        Ok(_) => Err(JailError::Spawner("unexpected reply to destroy".into())),
                        Err(e) => Err(e),
                    };
                    if first.is_ok() {
                        first = r;
                    }
                }
            });
            first
        })
    }

    /// Kills every jail, then runs `each` once per spawner with that spawner's jails not yet
    /// destroyed (a destroyed one takes no turn: dropping it waits for nobody). Returns the
    /// first error.
    fn by_spawner(
        jails: &[&Jail],
        mut each: impl FnMut(&Spawner, &[&Jail]) -> Result<(), JailError>,
    ) -> Result<(), JailError> {
        for j in jails {
            j.kill();
        }
        let mut first = Ok(());
        let mut rest: Vec<&Jail> = jails
            .iter()
            .copied()
            .filter(|j| !j.is_destroyed())
            .collect();
        while let Some(lead) = rest.first() {
            let spawner = lead.spawner.clone();
            let (ours, others): (Vec<&Jail>, Vec<&Jail>) = rest
                .into_iter()
                .partition(|j| Arc::ptr_eq(&j.spawner.inner, &spawner.inner));
            let r = each(&spawner, &ours);
            if first.is_ok() {
                first = r;
            }
            rest = others;
        }
        first
    }

    /// Destroys the jail through a shared reference (for a jail other threads still hold):
    /// every process dies and the workspace and cgroup are removed before this returns; what
    /// the holders try afterwards fails. Idempotent.
    pub fn shutdown(&self) -> Result<(), JailError> {
        Self::destroy_each(&[self])
    }

    /// Whether [`Jail::shutdown`] (or destroy) has run.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let _ = self.shutdown();
        // The slot's next jail may take the handle (if the spawner keeps the group).
        if let Some(group) = self.cgroup.0.take() {
            self.spawner
                .inner
                .keep_group(self.info.slot, self.info.cgroup_generation, group);
        }
    }
}

/// A jail's group handle: there for the jail's whole life, handed on when it is dropped.
#[derive(Debug)]
pub(crate) struct GroupHandle(Option<Box<dyn Cgroup>>);

impl std::ops::Deref for GroupHandle {
    type Target = dyn Cgroup;

    fn deref(&self) -> &(dyn Cgroup + 'static) {
        self.0
            .as_deref()
            .expect("a jail's group handle is taken only when the jail is dropped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `n` tickets have been handed out.
    fn tickets(turns: &Turns, n: u64) {
        while turns.state.lock().unwrap().0 < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn turns_are_served_in_the_order_they_were_asked_for() {
        let turns = Arc::new(Turns::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = turns.take();
        let mut waiting = Vec::new();
        for who in 0..4 {
            let (t, order) = (Arc::clone(&turns), Arc::clone(&order));
            waiting.push(std::thread::spawn(move || {
                let _turn = t.take();
                order.lock().unwrap().push(who);
                // The one holding a turn keeps it while it works: nobody may cut in.
                std::thread::sleep(Duration::from_millis(2));
            }));
            tickets(&turns, who + 2);
        }
        // A turn asked for now, even the moment the first ends, comes after all of them.
        drop(first);
        let again = {
            let turns = Arc::clone(&turns);
            let order = Arc::clone(&order);
            std::thread::spawn(move || {
                let _turn = turns.take();
                order.lock().unwrap().push(99);
            })
        };
        for w in waiting {
            w.join().unwrap();
        }
        again.join().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 99]);
    }
}
