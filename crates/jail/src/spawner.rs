//! The spawner: a small single-threaded root process that prepares and destroys jails.
//!
//! It is the only process that forks into new namespaces, so a multithreaded caller (the
//! HTTP server) never forks itself. It is started by [`crate::Spawner::launch`] with a clean
//! environment and a `SOCK_SEQPACKET` socket on descriptor 3, and serves requests until that
//! socket closes; then it destroys every jail it made and exits. If the client dies, the
//! socket closes with it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::agent::{AgentPlan, DEV_LINKS, DEVICES, agent_entry};
use crate::cgroup::{Cgroup, CgroupRoot};
use crate::config::{CgroupLimits, JailConfig};
use crate::error::{JailError, WireError};
use crate::netns::NetnsPool;
use crate::proto::{self, AgentReply, PreparedInfo, SpawnerReply, SpawnerRequest};
use crate::skeleton::{Lease, Skeletons};
use crate::slots::{self, SlotIds, Slots};
use crate::sys;
use crate::view::MountTable;
use crate::zygote::{ZYGOTE_ARG, ZYGOTE_FD, ZygoteInit, ZygoteReply, ZygoteRequest, ZygoteSpec};

/// Descriptor on which a spawner receives its socket.
pub const SPAWNER_FD: RawFd = 3;
/// Environment variables through which the client passes options.
pub const ENV_STATE_DIR: &str = "RUNCELL_SPAWNER_STATE_DIR";
pub const ENV_SLOTS: &str = "RUNCELL_SPAWNER_SLOTS";
pub const ENV_ID_BASE: &str = "RUNCELL_SPAWNER_ID_BASE";
pub const ENV_NETNS_POOL: &str = "RUNCELL_SPAWNER_NETNS_POOL";

/// How long an agent may take to build its jail.
const AGENT_READY_TIMEOUT_MS: i32 = 30_000;

/// Spawner options.
#[derive(Debug, Clone)]
pub struct SpawnerOptions {
    /// Host directory for the empty staging directory and the directory over which the
    /// spawner mounts (in its own mount namespace) the jails' device nodes. (Slots are
    /// claimed in the host's one lock file, [`slots::HOST_LOCK_FILE`].)
    pub state_dir: PathBuf,
    /// Number of jail slots (concurrent jails on this host).
    pub slots: u32,
    /// First host uid/gid of jail slots.
    pub id_base: u32,
    /// Network namespaces to keep made ahead of time (0: create one per jail, on the spot).
    pub netns_pool: usize,
}

impl Default for SpawnerOptions {
    fn default() -> Self {
        SpawnerOptions {
            state_dir: PathBuf::from("/run/runcell"),
            slots: 1024,
            id_base: slots::DEFAULT_ID_BASE,
            netns_pool: 4,
        }
    }
}

impl SpawnerOptions {
    pub(crate) fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (ENV_STATE_DIR, self.state_dir.display().to_string()),
            (ENV_SLOTS, self.slots.to_string()),
            (ENV_ID_BASE, self.id_base.to_string()),
            (ENV_NETNS_POOL, self.netns_pool.to_string()),
        ]
    }

    fn from_env() -> SpawnerOptions {
        let d = SpawnerOptions::default();
        SpawnerOptions {
            state_dir: std::env::var_os(ENV_STATE_DIR)
                .map(PathBuf::from)
                .unwrap_or(d.state_dir),
            slots: std::env::var(ENV_SLOTS)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.slots),
            id_base: std::env::var(ENV_ID_BASE)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.id_base),
            netns_pool: std::env::var(ENV_NETNS_POOL)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.netns_pool),
        }
    }
}

/// Entry point for a binary started as a spawner: serves on descriptor 3 with options from
/// the environment. Returns the process exit code.
pub fn spawner_main() -> i32 {
    // SAFETY: descriptor 3 was placed there for us by the client (see `Spawner::launch`),
    // and nothing else in this fresh process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(SPAWNER_FD) };
    // The spawner ends with its client (when the socket closes), destroying its jails and
    // removing its groups first; a Ctrl-C or SIGTERM meant for the server (the same process
    // group, or `pkill runcell`) must not end it before that. Jails start from default
    // dispositions (agents and programs reset every signal).
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal disposition in this single-threaded process.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let opts = SpawnerOptions::from_env();
    match Server::new(&opts) {
        Ok(mut server) => {
            let hello = SpawnerReply::Hello {
                cgroup: server.cgroups.version().to_string(),
                cgroup_place: server.cgroups.describe(),
            };
            if proto::send(sock.as_fd(), &hello, &[]).is_err() {
                return 1;
            }
            server.serve(sock.as_fd());
            server.shutdown();
            0
        }
        Err(e) => {
            let _ = proto::send(sock.as_fd(), &SpawnerReply::Error(WireError::from(&e)), &[]);
            2
        }
    }
}

struct JailRecord {
    pid: libc::pid_t,
    /// Set for jails forked by a zygote: their agent is the zygote's child, not ours.
    pidfd: Option<OwnedFd>,
    zygote: Option<u64>,
    slot: SlotIds,
    cgroup: Box<dyn Cgroup>,
    /// The skeleton its root is an overlay of.
    skeleton: u64,
}

/// A released jail ([`SpawnerRequest::Release`]) whose processes are not all gone yet: its
/// slot, group and skeleton are freed when they are.
struct Dying {
    rec: JailRecord,
    /// Names the agent when the record has no pidfd (our own child, not reaped yet).
    own_pidfd: Option<OwnedFd>,
    killed: std::time::Instant,
    /// Its teardown has the normal CPU weight back ([`TEARDOWN_BACKGROUND_MS`]).
    weighted: bool,
    /// Its agent has exited; a zygote's fork waits for the zygote to reap it.
    exited: bool,
}

impl Dying {
    fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.rec
            .pidfd
            .as_ref()
            .or(self.own_pidfd.as_ref())
            .map(|f| f.as_fd())
    }
}

/// How often a released jail that has exited is checked for being reaped by its zygote.
const REAP_POLL: std::time::Duration = std::time::Duration::from_micros(200);
/// How long a zygote may take to reap a jail's agent before its slot is freed anyway.
const REAP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A read-only overlay the spawner keeps for one slot (see [`Server::overlay_offers`]).
struct KeptOverlay {
    lower: PathBuf,
    /// The detached mount (the spawner's reference keeps its filesystem alive).
    mount: OwnedFd,
    made: std::time::Instant,
}

/// How long a slot's overlay serves its jails: a host directory's changes reach an overlay
/// made afterwards (the kernel does not promise they reach one already made over it).
const KEPT_OVERLAY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);
/// Overlays kept per slot (a skeleton's and the bound directories of its configurations).
const KEPT_OVERLAYS_PER_SLOT: usize = 6;

/// A zygote (see [`crate::zygote`]): our child, and its control socket.
struct ZygoteRecord {
    pid: libc::pid_t,
    sock: OwnedFd,
    /// Its jails not yet destroyed (they die with it: it is their pid namespace's init).
    forks: usize,
    /// Asked to stop: it forks no more, and ends with its last jail.
    retiring: bool,
    /// The skeleton its root is an overlay of.
    skeleton: u64,
    /// The plans it holds (see `ZygoteRequest::Fork`), as sent, oldest first: a mirror of the
    /// zygote's own list.
    plans: crate::zygote::Plans,
    last_plan: u64,
}

/// Where the slots' host ids start inside a zygote's user namespace (its uid 0 is a host id of
/// its own, just past the slots' range).
const ZYGOTE_INNER_BASE: u32 = 100_000;
/// How long a zygote may take to start its interpreter.
const ZYGOTE_READY_TIMEOUT_MS: i32 = 30_000;

struct Server {
    cgroups: CgroupRoot,
    slots: Slots,
    staging: PathBuf,
    /// A tmpfs of the spawner's own mount namespace holding each jail's device nodes.
    devices: PathBuf,
    /// The spawner's mount table, which each jail's agent starts from.
    mounts: MountTable,
    /// The read-only skeletons jails' roots are overlays of, in a tmpfs of the spawner's own.
    skeletons: Skeletons,
    jails: HashMap<u64, JailRecord>,
    /// Released jails being torn down, their slots not free yet.
    dying: Vec<Dying>,
    next_id: u64,
    zygotes: HashMap<u64, ZygoteRecord>,
    netns: Option<NetnsPool>,
    cap_last_cap: u32,
    /// Free slots whose emptied groups were kept for later jails, oldest first (see
    /// [`CgroupRoot::create`]).
    kept: std::collections::VecDeque<u32>,
    /// The handles of kept groups (files open) and their identities then, by slot, for
    /// [`CgroupRoot::create_reusing`].
    kept_groups: HashMap<u32, crate::cgroup::KeptGroup>,
    /// Each slot's group as it was made: its [`PreparedInfo::cgroup_generation`] and its
    /// [`Cgroup::identity`] then (what a kept handle is checked against, whenever it was
    /// kept); and the last generation given out.
    group_generations: HashMap<u32, SlotGroup>,
    last_generation: u64,
    /// Overlays kept by slot, for its jails one after another.
    slot_overlays: HashMap<u32, Vec<KeptOverlay>>,
    /// The jail configurations clients sent (see [`proto::ConfigRef`]).
    configs: proto::HeldConfigs,
}

/// Groups kept before one is used again: a slot (its host uids and its group) goes to another
/// jail only once this many other slots were freed after it, so a few dozen groups serve
/// every jail and a just-freed slot is never the next one handed out.
const KEPT_GROUPS_MIN: usize = 16;
/// The most groups kept; beyond it the oldest is removed.
const KEPT_GROUPS_MAX: usize = 64;

static FILTERS: OnceLock<Vec<seccompiler::BpfProgram>> = OnceLock::new();

impl Server {
    fn new(opts: &SpawnerOptions) -> Result<Server, JailError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NotRoot(
                "the spawner creates namespaces, cgroups and uid maps".into(),
            ));
        }
        if sys::thread_count().map_err(|e| JailError::io("count threads", e))? != 1 {
            return Err(JailError::Spawner(
                "the spawner must be single-threaded (it forks)".into(),
            ));
        }
        // Root's supplementary groups must not reach any jail.
        nix::unistd::setgroups(&[]).map_err(|e| JailError::io("setgroups", e.into()))?;
        let staging = opts.state_dir.join("root");
        for d in [&opts.state_dir, &staging] {
            std::fs::create_dir_all(d)
                .map_err(|e| JailError::io(format!("create {}", d.display()), e))?;
            // World-searchable: the jail's unprivileged agent mounts over the staging dir.
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| JailError::io(format!("chmod {}", d.display()), e))?;
        }
        let devices = opts.state_dir.join("dev");
        let views = opts.state_dir.join("views");
        device_mount(&devices, &views)?;
        let skeletons =
            Skeletons::new(&views).map_err(|e| JailError::io("prepare the skeletons", e))?;
        let mounts = MountTable::open().map_err(|e| JailError::io("read the mount table", e))?;
        let cgroups = CgroupRoot::detect().map_err(|e| JailError::io("find cgroups", e))?;
        cgroups
            .prepare()
            .map_err(|e| JailError::io("prepare cgroups", e))?;
        let slots = Slots::open(Path::new(slots::HOST_LOCK_FILE), opts.slots, opts.id_base)
            .map_err(|e| JailError::io("open slot lock file", e))?;
        if FILTERS.get().is_none() {
            let _ = FILTERS.set(crate::seccomp::filters()?);
        }
        crate::stepinit::prepare();
        let netns = if opts.netns_pool > 0 {
            // SAFETY: the spawner is single-threaded (checked above).
            Some(
                unsafe { NetnsPool::start(opts.netns_pool) }
                    .map_err(|e| JailError::io("start the network namespace factory", e))?,
            )
        } else {
            None
        };
        let mut server = Server {
            cgroups,
            slots,
            staging,
            devices,
            mounts,
            skeletons,
            jails: HashMap::new(),
            dying: Vec::new(),
            next_id: 1,
            zygotes: HashMap::new(),
            netns,
            cap_last_cap: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(63),
            kept: std::collections::VecDeque::new(),
            kept_groups: HashMap::new(),
            group_generations: HashMap::new(),
            last_generation: 0,
            slot_overlays: HashMap::new(),
            configs: proto::HeldConfigs::default(),
        };
        server.sweep_stale();
        Ok(server)
    }

    /// Removes cgroups left by spawners that died (their slot locks are free).
    fn sweep_stale(&mut self) {
        let Ok(names) = self.cgroups.list() else {
            return;
        };
        for name in names {
            let Some(index) = slots::parse_cgroup_name(&name) else {
                continue;
            };
            if let Ok(Some(slot)) = self.slots.try_claim(index) {
                if let Ok(cg) = self.cgroups.open(&name) {
                    let _ = cg.remove();
                }
                self.slots.release(slot.index);
            }
        }
    }

    fn serve(&mut self, sock: BorrowedFd<'_>) {
        loop {
            self.wait_request(sock);
            let (req, _fds) = match proto::recv::<SpawnerRequest>(sock) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    let err = JailError::Spawner(format!("bad request: {e}"));
                    if proto::send(sock, &SpawnerReply::Error(WireError::from(&err)), &[]).is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let sent = match req {
                SpawnerRequest::Prepare {
                    config,
                    limits,
                    zygote,
                } => match self
                    .configs
                    .resolve(config)
                    .and_then(|config| self.prepare(&config, limits, zygote))
                {
                    Ok((info, fds)) => {
                        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                        proto::send(sock, &SpawnerReply::Prepared(info), &raw)
                    }
                    Err(e) => proto::send(sock, &SpawnerReply::Error(WireError::from(&e)), &[]),
                },
                SpawnerRequest::StopZygote { id } => match self.stop_zygote(id) {
                    Ok(()) => proto::send(sock, &SpawnerReply::Destroyed, &[]),
                    Err(e) => proto::send(sock, &SpawnerReply::Error(WireError::from(&e)), &[]),
                },
                SpawnerRequest::StartZygote { spec } => match self.start_zygote(spec) {
                    Ok((id, version)) => {
                        proto::send(sock, &SpawnerReply::Zygote { id, version }, &[])
                    }
                    Err(e) => proto::send(sock, &SpawnerReply::Error(WireError::from(&e)), &[]),
                },
                SpawnerRequest::Destroy { jail } => match self.destroy(jail) {
                    Ok(()) => proto::send(sock, &SpawnerReply::Destroyed, &[]),
                    Err(e) => proto::send(sock, &SpawnerReply::Error(WireError::from(&e)), &[]),
                },
                SpawnerRequest::Release { jails } => match self.release(jails) {
                    Ok(()) => proto::send(sock, &SpawnerReply::Destroyed, &[]),
                    Err(e) => proto::send(sock, &SpawnerReply::Error(WireError::from(&e)), &[]),
                },
            };
            if sent.is_err() {
                return;
            }
        }
    }

    /// Prepares a jail of `config` (validated by [`proto::HeldConfigs::resolve`]).
    fn prepare(
        &mut self,
        config: &JailConfig,
        limits: CgroupLimits,
        zygote: Option<u64>,
    ) -> Result<(PreparedInfo, Vec<OwnedFd>), JailError> {
        if let Some(z) = zygote
            && self.zygotes.get(&z).is_none_or(|r| r.retiring)
        {
            return Err(JailError::Spawner(format!("no zygote {z}")));
        }
        limits.validate()?;
        let slot = self
            .claim_slot()
            .map_err(|e| JailError::io("claim a jail slot", e))?
            .ok_or(JailError::NoSlot(self.slots.capacity()))?;
        let name = slots::cgroup_name(slot.index);
        let kept = self.kept_groups.remove(&slot.index);
        let cgroup = match self.cgroups.create_reusing(kept, &name, &limits) {
            Ok((cg, reused)) => {
                if !reused || !self.group_generations.contains_key(&slot.index) {
                    self.last_generation += 1;
                    let made = SlotGroup {
                        generation: self.last_generation,
                        identity: cg.identity().ok(),
                    };
                    self.group_generations.insert(slot.index, made);
                }
                cg
            }
            Err(e) => {
                self.group_generations.remove(&slot.index);
                self.slots.release(slot.index);
                return Err(JailError::io(format!("create cgroup {name}"), e));
            }
        };
        let cgroup_generation = self.group_generations[&slot.index].generation;
        let made = self.make_devices(&slot.index.to_string()).map_err(|e| {
            let _ = cgroup.remove();
            self.slots.release(slot.index);
            JailError::io("make the jail's device nodes", e)
        })?;
        let lease = match self.lease(config) {
            Ok(l) => l,
            Err(e) => {
                let _ = cgroup.remove();
                self.remove_devices(&slot.index.to_string());
                self.slots.release(slot.index);
                return Err(e);
            }
        };
        let skeleton = lease.id;
        let made = match zygote {
            Some(z) => self
                .fork_from_zygote(z, config, slot, made, &lease, cgroup.as_ref())
                .inspect_err(|_| self.forget_if_dead(z)),
            None => self
                .clone_agent(config, slot, made, &lease, cgroup.as_ref())
                .map(|(pid, fds)| (pid, None, fds)),
        };
        match made {
            Ok((pid, pidfd, fds)) => {
                let id = self.next_id;
                self.next_id += 1;
                if let Some(z) = zygote.and_then(|z| self.zygotes.get_mut(&z)) {
                    z.forks += 1;
                }
                self.jails.insert(
                    id,
                    JailRecord {
                        pid,
                        pidfd,
                        zygote,
                        slot,
                        cgroup,
                        skeleton,
                    },
                );
                let info = PreparedInfo {
                    jail: id,
                    slot: slot.index,
                    program_id: slot.program,
                    cgroup: name,
                    cgroup_generation,
                };
                Ok((info, fds))
            }
            Err(e) => {
                let _ = cgroup.remove();
                self.remove_devices(&slot.index.to_string());
                self.slots.release(slot.index);
                self.release_skeleton(skeleton);
                Err(e)
            }
        }
    }

    fn clone_agent(
        &mut self,
        config: &JailConfig,
        slot: SlotIds,
        devices: PathBuf,
        lease: &Lease,
        cgroup: &dyn Cgroup,
    ) -> Result<(libc::pid_t, Vec<OwnedFd>), JailError> {
        let (ctrl, ctrl_child) =
            proto::seqpacket_pair().map_err(|e| JailError::io("socketpair", e))?;
        let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| JailError::io("pipe", e.into()))?;
        let netns = self.netns.as_mut().and_then(NetnsPool::take);
        let attach = cgroup
            .self_attach_files()
            .map_err(|e| JailError::io("open the cgroup's tasks files", e))?;
        let mut plan = self.plan(config, devices, lease)?;
        let offers = self.overlay_offers(slot.index, &plan);
        plan.overlay_lowers = offers.iter().map(|(l, _)| l.clone()).collect();
        plan.overlay_fds = offers.iter().map(|(_, f)| f.as_raw_fd()).collect();
        plan.filters = FILTERS.get().cloned().unwrap_or_default();
        plan.cgroup_tasks = attach.iter().flatten().map(|f| f.as_raw_fd()).collect();
        plan.loopback = netns.is_none();
        let mut flags = crate::zygote::JAIL_NAMESPACES & !libc::CLONE_NEWNET;
        match (&netns, &self.netns) {
            (Some(ns), Some(pool)) => pool
                .enter(ns)
                .map_err(|e| JailError::io("enter a pooled network namespace", e))?,
            _ => flags |= libc::CLONE_NEWNET,
        }
        // SAFETY: the spawner is single-threaded (checked at start-up).
        let cloned = unsafe { sys::clone_fork(flags) };
        if matches!(cloned, Ok(0)) {
            agent_entry(&plan, ctrl_child.as_raw_fd(), sync_r.as_raw_fd());
        }
        if netns.is_some()
            && let Some(pool) = &self.netns
            && let Err(e) = pool.leave()
        {
            // Carrying on inside a jail's network namespace would hand it to the next jail
            // too: stop (every jail dies with the spawner).
            eprintln!("runcell spawner: cannot return to its network namespace: {e}");
            std::process::abort();
        }
        drop(netns);
        let pid = cloned.map_err(|e| JailError::io("clone jail", e))?;
        drop(ctrl_child);
        drop(sync_r);
        let kill = |e: JailError| {
            // SAFETY: our own child, not yet reaped, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            e
        };
        let maps = format!(
            "0 {} 1\n{} {} 1\n",
            slot.agent,
            crate::config::JAIL_UID,
            slot.program
        );
        let gmaps = format!(
            "0 {} 1\n{} {} 1\n",
            slot.agent,
            crate::config::JAIL_GID,
            slot.program
        );
        write_proc(pid, "uid_map", &maps).map_err(kill)?;
        write_proc(pid, "gid_map", &gmaps).map_err(kill)?;
        let joins_itself = attach.is_some();
        drop(attach);
        let pidfd = sys::pidfd_open(pid).map_err(|e| kill(JailError::io("pidfd_open", e)))?;
        release_agent(cgroup, joins_itself, pid, sync_w).map_err(kill)?;
        Ok((pid, vec![ctrl, pidfd]))
    }

    /// A use of the current skeleton of `config` (see [`Skeletons::acquire`]).
    fn lease(&mut self, config: &JailConfig) -> Result<Lease, JailError> {
        let mount_points = self
            .mounts
            .current()
            .map_err(|e| JailError::io("read the mount table", e))?;
        self.skeletons
            .acquire(config, mount_points)
            .map_err(|e| JailError::io("make the root's skeleton", e))
    }

    /// The plan of an agent that builds `config`'s root over `devices` from the skeleton of
    /// `lease`, from our mount namespace: no filters or descriptors yet, loopback to bring up.
    fn plan(
        &mut self,
        config: &JailConfig,
        devices: PathBuf,
        lease: &Lease,
    ) -> Result<AgentPlan, JailError> {
        let mut config = config.clone();
        // The mount table the skeleton was made for (one snapshot for both).
        let mount_points = lease.mount_points.clone();
        // What the skeleton holds needs no mount.
        let mut in_root = lease.in_root.iter();
        config
            .binds
            .retain(|_| !in_root.next().copied().unwrap_or(false));
        Ok(AgentPlan {
            config,
            staging: self.staging.clone(),
            devices,
            mount_points,
            skeleton: lease.root.clone(),
            empty: lease.empty.clone(),
            filters: Vec::new(),
            cgroup_tasks: Vec::new(),
            loopback: true,
            cap_last_cap: self.cap_last_cap,
            overlay_lowers: Vec::new(),
            overlay_fds: Vec::new(),
        })
    }

    /// Starts a zygote: cloned like an agent into namespaces of its own (its user namespace
    /// maps its uid 0 to a host id of its own and the slots' ids, so that it can map each
    /// fork to its slot), then a fresh `execve` of this binary with the spec's environment.
    fn start_zygote(&mut self, spec: ZygoteSpec) -> Result<(u64, String), JailError> {
        spec.validate()?;
        let id = self.next_id;
        self.next_id += 1;
        let name = format!("zygote-{id}");
        let devices = self
            .make_devices(&name)
            .map_err(|e| JailError::io("make the zygote's device nodes", e))?;
        let lease = self
            .lease(&spec.config)
            .inspect_err(|_| self.remove_devices(&name))?;
        match self.clone_zygote(spec, devices, &lease) {
            Ok((pid, sock, version)) => {
                self.zygotes.insert(
                    id,
                    ZygoteRecord {
                        pid,
                        sock,
                        forks: 0,
                        retiring: false,
                        skeleton: lease.id,
                        plans: Default::default(),
                        last_plan: 0,
                    },
                );
                Ok((id, version))
            }
            Err(e) => {
                self.remove_devices(&name);
                self.skeletons.release(lease.id);
                Err(e)
            }
        }
    }

    fn clone_zygote(
        &mut self,
        spec: ZygoteSpec,
        devices: PathBuf,
        lease: &Lease,
    ) -> Result<(libc::pid_t, OwnedFd, String), JailError> {
        use std::ffi::CString;
        let (ctrl, ctrl_child) =
            proto::seqpacket_pair().map_err(|e| JailError::io("socketpair", e))?;
        let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| JailError::io("pipe", e.into()))?;
        let exe = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open("/proc/self/exe")
            .map_err(|e| JailError::io("open the spawner's executable", e))?;
        let cstr = |s: String| {
            CString::new(s).map_err(|_| JailError::InvalidConfig("NUL byte in a zygote".into()))
        };
        let argv = vec![cstr("runcell".into())?, cstr(ZYGOTE_ARG.into())?];
        let envp = spec
            .env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let init = ZygoteInit {
            plan: self.plan(&spec.config, devices, lease)?,
            spec,
        };
        let flags = crate::zygote::JAIL_NAMESPACES;
        // SAFETY: the spawner is single-threaded (checked at start-up).
        let cloned = unsafe { sys::clone_fork(flags) };
        if matches!(cloned, Ok(0)) {
            zygote_exec(
                ctrl_child.as_raw_fd(),
                sync_r.as_raw_fd(),
                exe.as_raw_fd(),
                &argv,
                &envp,
            );
        }
        let pid = cloned.map_err(|e| JailError::io("clone zygote", e))?;
        drop((ctrl_child, sync_r, exe));
        let kill = |e: JailError| {
            // SAFETY: our own child, not yet reaped, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            e
        };
        let zroot = self.slots.id_base() + 2 * self.slots.capacity();
        let maps = format!(
            "0 {zroot} 1\n{ZYGOTE_INNER_BASE} {} {}\n",
            self.slots.id_base(),
            2 * self.slots.capacity()
        );
        write_proc(pid, "uid_map", &maps).map_err(kill)?;
        write_proc(pid, "gid_map", &maps).map_err(kill)?;
        sys::write_all(sync_w.as_raw_fd(), b"g")
            .map_err(|e| kill(JailError::io("start zygote", e)))?;
        drop(sync_w);
        proto::send(ctrl.as_fd(), &init, &[])
            .map_err(|e| kill(JailError::io("send the zygote its plan", e)))?;
        let reply = zygote_reply(ctrl.as_fd(), ZYGOTE_READY_TIMEOUT_MS).map_err(kill)?;
        match reply {
            (ZygoteReply::Ready { version }, _) => Ok((pid, ctrl, version)),
            (ZygoteReply::Error(e), _) => Err(kill(e.into())),
            _ => Err(kill(JailError::Spawner(
                "unexpected reply from a zygote".into(),
            ))),
        }
    }

    /// Has a zygote fork the jail's agent; then moves it into its cgroup and lets it build
    /// the jail, as [`Server::clone_agent`] does for its own clones.
    fn fork_from_zygote(
        &mut self,
        zygote: u64,
        config: &JailConfig,
        slot: SlotIds,
        devices: PathBuf,
        lease: &Lease,
        cgroup: &dyn Cgroup,
    ) -> Result<(libc::pid_t, Option<OwnedFd>, Vec<OwnedFd>), JailError> {
        let (ctrl, ctrl_child) =
            proto::seqpacket_pair().map_err(|e| JailError::io("socketpair", e))?;
        let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| JailError::io("pipe", e.into()))?;
        let attach = cgroup
            .self_attach_files()
            .map_err(|e| JailError::io("open the cgroup's tasks files", e))?;
        let inner = |host: u32| ZYGOTE_INNER_BASE + (host - self.slots.id_base());
        let map = format!(
            "0 {} 1\n{} {} 1\n",
            inner(slot.agent),
            crate::config::JAIL_UID,
            inner(slot.program)
        );
        let mut plan = self.plan(config, devices, lease)?;
        let offers = self.overlay_offers(slot.index, &plan);
        let devices = std::mem::take(&mut plan.devices);
        let z = self
            .zygotes
            .get_mut(&zygote)
            .ok_or_else(|| JailError::Spawner(format!("no zygote {zygote}")))?;
        // The plan goes to the zygote only if it does not hold it yet.
        let (plan, plan_id) = match z.plans.iter().find(|(_, p)| p.same_for_every_jail(&plan)) {
            Some((id, _)) => (None, *id),
            None => {
                z.last_plan += 1;
                crate::zygote::hold_plan(&mut z.plans, z.last_plan, plan.clone());
                (Some(Box::new(plan)), z.last_plan)
            }
        };
        let req = ZygoteRequest::Fork {
            plan,
            plan_id,
            devices,
            overlay_lowers: offers.iter().map(|(l, _)| l.clone()).collect(),
            uid_map: map.clone(),
            gid_map: map,
        };
        // The zygote finds the overlays after the control socket and the sync pipe, one per
        // lower directory the plan lists, and the cgroup's files after them.
        let mut fds = vec![ctrl_child.as_raw_fd(), sync_r.as_raw_fd()];
        fds.extend(offers.iter().map(|(_, f)| f.as_raw_fd()));
        fds.extend(attach.iter().flatten().map(|f| f.as_raw_fd()));
        let sent = proto::send(z.sock.as_fd(), &req, &fds)
            .map_err(|e| JailError::io("ask the zygote for a jail", e))
            .and_then(|()| {
                drop((ctrl_child, sync_r));
                match zygote_reply(z.sock.as_fd(), AGENT_READY_TIMEOUT_MS)? {
                    (ZygoteReply::Forked, mut fds) if fds.len() == 1 => Ok(fds.remove(0)),
                    (ZygoteReply::Error(e), _) => Err(e.into()),
                    _ => Err(JailError::Spawner("unexpected reply from a zygote".into())),
                }
            });
        let pidfd = match sent {
            Ok(pidfd) => pidfd,
            Err(e) => {
                // Whatever the zygote holds now, it gets the next plan whole.
                z.plans.clear();
                return Err(e);
            }
        };
        let kill = |e: JailError| {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            e
        };
        let pid = sys::pidfd_pid(pidfd.as_fd())
            .map_err(|e| kill(JailError::io("read the jail's pid", e)))?
            .ok_or_else(|| kill(JailError::Spawner("the zygote's fork died".into())))?;
        let joins_itself = attach.is_some();
        drop(attach);
        let client_pidfd = pidfd
            .try_clone()
            .map_err(|e| kill(JailError::io("dup pidfd", e)))?;
        release_agent(cgroup, joins_itself, pid, sync_w).map_err(kill)?;
        Ok((pid, Some(pidfd), vec![ctrl, client_pidfd]))
    }

    /// Kills the jails and returns: [`Server::wait_request`] settles each one once its
    /// processes are gone, so the caller (a pool's reaper) and the callers after it do not
    /// wait for teardowns (≈1 ms each under load, during which a spawner that waited served
    /// nobody).
    fn release(&mut self, ids: Vec<u64>) -> Result<(), JailError> {
        let mut first = Ok(());
        for id in ids {
            let Some(rec) = self.jails.remove(&id) else {
                if first.is_ok() {
                    first = Err(JailError::Spawner(format!("no jail {id}")));
                }
                continue;
            };
            kill(&rec);
            let own_pidfd = match &rec.pidfd {
                Some(_) => None,
                // Our child, not reaped yet: its pid names it.
                None => match sys::pidfd_open(rec.pid) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        // Not watchable: torn down now, the old way.
                        let r = self.finish(rec);
                        if first.is_ok() {
                            first = r.map_err(|_| JailError::io("watch a released jail", e));
                        }
                        continue;
                    }
                },
            };
            self.dying.push(Dying {
                rec,
                own_pidfd,
                killed: std::time::Instant::now(),
                weighted: false,
                exited: false,
            });
        }
        first
    }

    /// Returns once a request (or the client's hang-up) is waiting on `sock`, settling
    /// released jails as their processes go meanwhile.
    fn wait_request(&mut self, sock: BorrowedFd<'_>) {
        loop {
            self.reap_dying();
            if self.dying.is_empty() {
                return;
            }
            let mut fds = vec![libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut timeout: Option<std::time::Duration> = None;
            let mut sooner = |t: std::time::Duration| {
                timeout = Some(timeout.map_or(t, |u| u.min(t)));
            };
            for d in &self.dying {
                if d.exited {
                    sooner(REAP_POLL);
                    continue;
                }
                if let Some(fd) = d.pidfd() {
                    fds.push(libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
                if !d.weighted {
                    sooner(TEARDOWN_BACKGROUND.saturating_sub(d.killed.elapsed()));
                }
            }
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            let tsp = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `fds` is a live array of pollfds for descriptors we hold; `tsp` is null
            // or points to `ts`, alive for the call; no signal mask is changed.
            let n = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    tsp,
                    std::ptr::null(),
                )
            };
            if n > 0 && fds[0].revents != 0 {
                return;
            }
        }
    }

    /// Settles the released jails that are gone (never waits).
    fn reap_dying(&mut self) {
        let mut i = 0;
        while i < self.dying.len() {
            let d = &mut self.dying[i];
            if !d.exited {
                d.exited = d.pidfd().is_none_or(sys::is_readable);
            }
            let gone = d.exited
                && match &d.rec.pidfd {
                    // A zygote's fork, once the zygote has reaped it (no zombie of the jail's
                    // uid may be left for the slot's next jail).
                    Some(p) => {
                        !matches!(sys::pidfd_pid(p.as_fd()), Ok(Some(_)))
                            || d.killed.elapsed() > REAP_WAIT
                    }
                    None => !matches!(
                        nix::sys::wait::waitpid(
                            nix::unistd::Pid::from_raw(d.rec.pid),
                            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                        ),
                        Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR)
                    ),
                };
            if gone {
                let d = self.dying.swap_remove(i);
                let _ = self.settle(d.rec);
                continue;
            }
            if !d.exited && !d.weighted && d.killed.elapsed() >= TEARDOWN_BACKGROUND {
                let _ = d.rec.cgroup.set_cpu_weight(false);
                d.weighted = true;
            }
            i += 1;
        }
    }

    /// Waits for every released jail to be gone and settles it.
    fn settle_all_dying(&mut self) {
        for d in std::mem::take(&mut self.dying) {
            let _ = self.finish(d.rec);
        }
    }

    fn destroy(&mut self, jail: u64) -> Result<(), JailError> {
        let rec = self
            .jails
            .remove(&jail)
            .ok_or_else(|| JailError::Spawner(format!("no jail {jail}")))?;
        let r = self.finish(rec);
        r.map_err(|e| JailError::io("remove jail cgroup", e))
    }

    /// Kills a jail's agent (the kernel kills every other process of its pid namespace before
    /// the agent's exit completes), reaps it, removes the cgroup and frees the slot.
    fn finish(&mut self, rec: JailRecord) -> io::Result<()> {
        kill(&rec);
        match &rec.pidfd {
            // A zygote's fork: named by its pidfd (the zygote reaps it, so its pid may be
            // reused); its exit is seen on the pidfd once its pid namespace is empty.
            Some(pidfd) => {
                wait_for_teardown(pidfd.as_fd(), rec.cgroup.as_ref());
                // Then until the zygote has reaped it (no zombie of the jail's uid is left).
                let deadline = std::time::Instant::now() + REAP_WAIT;
                while matches!(sys::pidfd_pid(pidfd.as_fd()), Ok(Some(_)))
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(REAP_POLL);
                }
            }
            None => {
                // (Our child, not yet reaped: its pid names it.)
                if let Ok(pidfd) = sys::pidfd_open(rec.pid) {
                    wait_for_teardown(pidfd.as_fd(), rec.cgroup.as_ref());
                }
                while let Err(nix::errno::Errno::EINTR) =
                    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(rec.pid), None)
                {
                }
            }
        }
        self.settle(rec)
    }

    /// Frees what a jail whose processes are all gone (and reaped) held: its group is kept
    /// for a later jail (or removed), its slot and skeleton released, and a retiring zygote
    /// whose last jail it was ended.
    fn settle(&mut self, rec: JailRecord) -> io::Result<()> {
        let r = self.keep_or_remove(rec.slot.index, rec.cgroup);
        self.slots.release(rec.slot.index);
        self.release_skeleton(rec.skeleton);
        if let Some(id) = rec.zygote
            && let Some(z) = self.zygotes.get_mut(&id)
        {
            z.forks = z.forks.saturating_sub(1);
            if z.retiring && z.forks == 0 {
                self.end_zygote(id);
            }
        }
        r
    }

    /// Forgets a zygote that has died (its jails died with it), so that asking for it says
    /// so and its caller can start another.
    fn forget_if_dead(&mut self, id: u64) {
        let Some(z) = self.zygotes.get(&id) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(z.pid);
        if matches!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::Exited(..) | nix::sys::wait::WaitStatus::Signaled(..))
        ) && let Some(z) = self.zygotes.remove(&id)
        {
            drop(z.sock);
            self.remove_devices(&format!("zygote-{id}"));
        }
    }

    /// Stops a zygote: at once if none of its jails is left, else when the last one is
    /// destroyed (they die with it). It forks no more meanwhile.
    fn stop_zygote(&mut self, id: u64) -> Result<(), JailError> {
        let z = self
            .zygotes
            .get_mut(&id)
            .ok_or_else(|| JailError::Spawner(format!("no zygote {id}")))?;
        z.retiring = true;
        if z.forks == 0 {
            self.end_zygote(id);
        }
        Ok(())
    }

    fn end_zygote(&mut self, id: u64) {
        let Some(z) = self.zygotes.remove(&id) else {
            return;
        };
        drop(z.sock);
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(z.pid, libc::SIGKILL) };
        while let Err(nix::errno::Errno::EINTR) =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(z.pid), None)
        {}
        self.remove_devices(&format!("zygote-{id}"));
        self.release_skeleton(z.skeleton);
    }

    /// Makes a jail's `/dev` in `name/dev` unless the slot has it already: device nodes
    /// (numbered like the host's; the slot's own inodes, so a lock or watch on its `/dev/null`
    /// is invisible to other jails and to the host, and dies with the jail's processes), the
    /// mount points of its devpts and `/dev/shm`, and the usual links. The agent binds it whole
    /// and read-only (one mount, not a tmpfs and a bind per node). And an empty `name/layers`.
    fn make_devices(&self, name: &str) -> io::Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
        let dir = self.devices.join(name);
        // A slot's directory is kept for its next jails: nothing in a jail can change it (it
        // is bound read-only and belongs to the host's root), so it is made once. (`layers`
        // is made last.)
        if dir.join("layers").is_dir() {
            return Ok(dir);
        }
        self.remove_devices(name);
        let mut mkdir = std::fs::DirBuilder::new();
        mkdir.mode(0o755);
        mkdir.create(&dir)?;
        let dev = dir.join("dev");
        mkdir.create(&dev)?;
        for name in DEVICES {
            let host = std::fs::metadata(Path::new("/dev").join(name))?;
            if !host.file_type().is_char_device() {
                return Err(io::Error::other(format!(
                    "/dev/{name} is not a character device"
                )));
            }
            let node = dev.join(name);
            let perm = host.mode() & 0o777;
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(perm),
                host.rdev(),
            )?;
            // (mknod applies the umask.)
            std::fs::set_permissions(&node, std::fs::Permissions::from_mode(perm))?;
        }
        mkdir.create(dev.join("pts"))?;
        mkdir.create(dev.join("shm"))?;
        for (target, link) in DEV_LINKS {
            std::os::unix::fs::symlink(target, dev.join(link))?;
        }
        // Where the agent mounts the overlays it builds its root from (see `agent::build_root`).
        mkdir.create(dir.join("layers"))?;
        Ok(dir)
    }

    fn remove_devices(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.devices.join(name));
    }

    /// Ends a use of a skeleton; the slots' overlays of skeletons removed then go too.
    fn release_skeleton(&mut self, id: u64) {
        self.skeletons.release(id);
        let removed = self.skeletons.take_removed();
        if !removed.is_empty() {
            for kept in self.slot_overlays.values_mut() {
                kept.retain(|o| !removed.contains(&o.lower));
            }
        }
    }

    /// Detached copies of the read-only overlays slot `index` keeps for `plan`'s root (its
    /// skeleton) and for its bound directories without host mounts beneath, made now when the
    /// slot has none (or an older one than [`KEPT_OVERLAY_MAX_AGE`]); the agent attaches them
    /// where it would have mounted overlays of its own (see `AgentPlan::overlay_lowers`).
    ///
    /// Making an overlay, and above all taking one down (the kernel waits for an expedited
    /// RCU grace period for each), was ≈ 8 % of the CPU of a Python execution for its three
    /// (docs/benchmarks.md).
    /// A slot's jails run one after another, so they share its overlays only in time: a
    /// lock, lease or watch dies with the processes that hold it, which are all gone before
    /// the slot's next jail is prepared, and the overlays are read-only (no timestamp, mode
    /// or content changes). Jails of different slots never share one.
    fn overlay_offers(&mut self, index: u32, plan: &AgentPlan) -> Vec<(PathBuf, OwnedFd)> {
        if !sys::clones_detached_mounts() {
            // (Linux 6.1: each agent mounts its own.)
            return Vec::new();
        }
        let mut lowers = vec![plan.skeleton.clone()];
        for b in &plan.config.binds {
            let Ok(real) = std::fs::canonicalize(&b.source) else {
                continue;
            };
            if real.is_dir()
                && !crate::view::has_mounts_beneath(&real, &plan.mount_points)
                && !lowers.contains(&real)
            {
                lowers.push(real);
            }
        }
        lowers.truncate(KEPT_OVERLAYS_PER_SLOT);
        let kept = self.slot_overlays.entry(index).or_default();
        kept.retain(|o| o.made.elapsed() < KEPT_OVERLAY_MAX_AGE);
        let mut offers = Vec::with_capacity(lowers.len());
        for lower in lowers {
            let i = match kept.iter().position(|o| o.lower == lower) {
                Some(i) => i,
                None => match sys::detached_overlay(&lower, &plan.empty) {
                    Ok(mount) => {
                        if kept.len() >= KEPT_OVERLAYS_PER_SLOT {
                            kept.remove(0);
                        }
                        kept.push(KeptOverlay {
                            lower: lower.clone(),
                            mount,
                            made: std::time::Instant::now(),
                        });
                        kept.len() - 1
                    }
                    // The agent mounts one of its own.
                    Err(_) => continue,
                },
            };
            if let Ok(copy) = sys::clone_mount(kept[i].mount.as_fd()) {
                offers.push((lower, copy));
            }
        }
        offers
    }

    /// A free slot: the one whose group was kept longest once enough are kept, else the next
    /// one in turn.
    fn claim_slot(&mut self) -> io::Result<Option<SlotIds>> {
        while self.kept.len() >= KEPT_GROUPS_MIN {
            let Some(index) = self.kept.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.try_claim(index)? {
                return Ok(Some(slot));
            }
            // Another runcell process on this host took the slot, and the group with it.
            self.kept_groups.remove(&index);
        }
        let mut slot = self.slots.acquire()?;
        if slot.is_none() && !self.dying.is_empty() {
            // Every slot is taken: the released jails' come back once they are gone.
            self.settle_all_dying();
            slot = self.slots.acquire()?;
        }
        if let Some(s) = &slot {
            self.kept.retain(|&i| i != s.index);
        }
        Ok(slot)
    }

    /// Empties a finished jail's group and keeps it for a later jail of its slot (which
    /// [`CgroupRoot::create`] checks again), or removes it if it will not empty.
    fn keep_or_remove(&mut self, index: u32, cgroup: Box<dyn Cgroup>) -> io::Result<()> {
        if cgroup.empty().is_err() {
            return cgroup.remove();
        }
        // The identity the group had when it was made: one that changed since, by another
        // hand, fails the check when the slot's next jail would take this handle.
        if let Some(identity) = self
            .group_generations
            .get(&index)
            .and_then(|g| g.identity.clone())
        {
            self.kept_groups.insert(index, (cgroup, identity));
        }
        self.kept.push_back(index);
        while self.kept.len() > KEPT_GROUPS_MAX {
            if let Some(oldest) = self.kept.pop_front() {
                self.remove_kept(oldest);
            }
        }
        Ok(())
    }

    /// Removes the kept group of free slot `index` (claiming the slot meanwhile, so that no
    /// other runcell process is using it).
    fn remove_kept(&mut self, index: u32) {
        self.kept_groups.remove(&index);
        self.slot_overlays.remove(&index);
        if let Ok(Some(slot)) = self.slots.try_claim(index) {
            if let Ok(cg) = self.cgroups.open(&slots::cgroup_name(index)) {
                let _ = cg.remove();
            }
            self.slots.release(slot.index);
        }
    }

    fn shutdown(&mut self) {
        self.settle_all_dying();
        let ids: Vec<u64> = self.jails.keys().copied().collect();
        for id in ids {
            if let Some(rec) = self.jails.remove(&id) {
                let _ = self.finish(rec);
            }
        }
        while let Some(index) = self.kept.pop_front() {
            self.remove_kept(index);
        }
        let zygotes: Vec<u64> = self.zygotes.keys().copied().collect();
        for id in zygotes {
            self.end_zygote(id);
        }
    }
}

/// Moves the spawner into a mount namespace of its own, a slave of the host's (host mounts still
/// reach it; its own never reach the host), and mounts a tmpfs at `dir` for jails' device
/// nodes and one at `views` for the skeletons of their roots (see [`Skeletons`]). Made in the
/// host's user namespace, the nodes work (a jail's own mounts are `nodev`); both vanish with
/// the spawner.
fn device_mount(dir: &Path, views: &Path) -> Result<(), JailError> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| JailError::io("unshare the spawner's mount namespace", e.into()))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| JailError::io("make the spawner's mounts slaves", e.into()))?;
    for (d, flags, options) in [
        (
            dir,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "size=64k,nr_inodes=65536,mode=755",
        ),
        (
            views,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "size=256m,nr_inodes=262144,mode=755",
        ),
    ] {
        std::fs::create_dir_all(d)
            .map_err(|e| JailError::io(format!("create {}", d.display()), e))?;
        mount(Some("tmpfs"), d, Some("tmpfs"), flags, Some(options))
            .map_err(|e| JailError::io(format!("mount a tmpfs on {}", d.display()), e.into()))?;
    }
    Ok(())
}

fn write_proc(pid: libc::pid_t, file: &str, contents: &str) -> Result<(), JailError> {
    let path = Path::new("/proc").join(pid.to_string()).join(file);
    std::fs::write(&path, contents)
        .map_err(|e| JailError::io(format!("write {}", path.display()), e))
}

/// Lets a cloned agent go: moves it into its cgroup unless it joins by itself (cgroup v1
/// `tasks` files) and tells it to start. The agent then builds its jail while the spawner
/// serves other requests: its client waits for it to be ready ([`wait_ready`]). (Waiting
/// here made every caller of the spawner wait for each root being built, one at a time, at
/// the pool's lowest CPU weight.)
fn release_agent(
    cgroup: &dyn Cgroup,
    joins_itself: bool,
    pid: libc::pid_t,
    sync_w: OwnedFd,
) -> Result<(), JailError> {
    if !joins_itself {
        cgroup
            .add_process(pid)
            .map_err(|e| JailError::io("move the jail into its cgroup", e))?;
    }
    sys::write_all(sync_w.as_raw_fd(), b"g").map_err(|e| JailError::io("start agent", e))?;
    drop(sync_w);
    Ok(())
}

/// Waits for a released agent's ready message on its control socket; returns the workspace
/// (and runtime directory) descriptors it sent.
pub(crate) fn wait_ready(ctrl: BorrowedFd<'_>) -> Result<Vec<OwnedFd>, JailError> {
    let setup = |detail: &str| JailError::Setup {
        stage: "agent".into(),
        detail: detail.into(),
    };
    match recv_within::<AgentReply>(ctrl, AGENT_READY_TIMEOUT_MS)? {
        Ok((AgentReply::Ready, fds)) if matches!(fds.len(), 1 | 2) => Ok(fds),
        Ok((AgentReply::Error(e), _)) => Err(e.into()),
        Ok(_) => Err(JailError::Spawner(
            "unexpected reply from the jail agent".into(),
        )),
        Err(Silence::Timeout) => Err(setup("the jail did not become ready in time")),
        Err(Silence::Closed) => Err(setup("the jail's agent exited during setup")),
    }
}

/// Why no message came.
enum Silence {
    Timeout,
    Closed,
}

/// Receives one message within `timeout_ms`.
fn recv_within<T: serde::de::DeserializeOwned>(
    sock: BorrowedFd<'_>,
    timeout_ms: i32,
) -> Result<Result<(T, Vec<OwnedFd>), Silence>, JailError> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n == 0 {
            return Ok(Err(Silence::Timeout));
        }
        break;
    }
    // A peer that closed with messages of ours unread (an agent that failed while a start
    // request was queued behind its preparation, see `Spawner::prepare_and_start`) makes the
    // first read report ECONNRESET; what it sent before it closed is still there to read.
    let got = match proto::recv::<T>(sock) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => proto::recv::<T>(sock),
        r => r,
    };
    Ok(got
        .map_err(|e| JailError::io("read a reply", e))?
        .ok_or(Silence::Closed))
}

/// Kills a jail's agent; the kernel kills every other process of its pid namespace before the
/// agent's exit completes.
fn kill(rec: &JailRecord) {
    match &rec.pidfd {
        Some(pidfd) => {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        }
        None => {
            // SAFETY: our child, not yet reaped.
            unsafe { libc::kill(rec.pid, libc::SIGKILL) };
        }
    }
    // A frozen jail (`Jail::set_frozen`) must be thawed for SIGKILL to take it on cgroup v1;
    // on v2 it is a no-op. Fails harmlessly where there is no freezer.
    let _ = rec.cgroup.set_frozen(false);
}

/// How long a killed jail's teardown may take at the lowest CPU weight (which it gets when
/// released, so that it yields to running programs) before it gets the normal weight back.
const TEARDOWN_BACKGROUND_MS: i32 = 2;
const TEARDOWN_BACKGROUND: std::time::Duration =
    std::time::Duration::from_millis(TEARDOWN_BACKGROUND_MS as u64);

/// Waits until the killed jail whose agent `pidfd` names has exited, which the kernel reports
/// once every process of its pid namespace is gone and its memory freed.
///
/// A teardown at the lowest weight on a busy machine gets almost no CPU: every destroy then
/// held the spawner for as long, the reaper fell behind the runs, and under sustained load the
/// dead jails held every slot. So the teardown yields to running programs for a moment only.
fn wait_for_teardown(pidfd: BorrowedFd<'_>, cgroup: &dyn Cgroup) {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut timeout = TEARDOWN_BACKGROUND_MS;
    loop {
        // SAFETY: poll on one pollfd we own.
        match unsafe { libc::poll(&mut p, 1, timeout) } {
            0 if timeout == TEARDOWN_BACKGROUND_MS => {
                let _ = cgroup.set_cpu_weight(false);
                timeout = 10_000;
            }
            n if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// A zygote's reply within `timeout_ms`.
fn zygote_reply(
    sock: BorrowedFd<'_>,
    timeout_ms: i32,
) -> Result<(ZygoteReply, Vec<OwnedFd>), JailError> {
    let setup = |detail: &str| JailError::Setup {
        stage: "zygote".into(),
        detail: detail.into(),
    };
    match recv_within::<ZygoteReply>(sock, timeout_ms)? {
        Ok(r) => Ok(r),
        Err(Silence::Timeout) => Err(setup("the zygote did not answer in time")),
        Err(Silence::Closed) => Err(setup("the zygote exited")),
    }
}

/// The zygote's clone until its `execve`: waits for its id maps, becomes uid 0 of its user
/// namespace, dies with the spawner, and executes this binary afresh (nothing of the
/// spawner's memory survives) with the control socket on [`ZYGOTE_FD`]. Never returns.
fn zygote_exec(
    ctrl: RawFd,
    sync: RawFd,
    exe: RawFd,
    argv: &[std::ffi::CString],
    envp: &[std::ffi::CString],
) -> ! {
    let fail = || -> ! {
        // SAFETY: ending the clone without running the spawner's destructors.
        unsafe { libc::_exit(127) }
    };
    if sys::close_all_except(&[ctrl, sync, exe]).is_err() {
        fail();
    }
    crate::agent::default_signal_dispositions();
    let mut b = [0u8; 1];
    if !matches!(sys::read_full(sync, &mut b), Ok(1)) {
        fail();
    }
    if nix::unistd::setgroups(&[]).is_err()
        || nix::unistd::setresgid(0.into(), 0.into(), 0.into()).is_err()
        || nix::unistd::setresuid(0.into(), 0.into(), 0.into()).is_err()
        || nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
    {
        fail();
    }
    // SAFETY: descriptor shuffling in this single-threaded clone, then execveat with valid
    // NULL-terminated arrays of C strings that outlive the call.
    unsafe {
        // Out of the way of ZYGOTE_FD first, then the socket onto it, inheritable.
        let exe = libc::fcntl(exe, libc::F_DUPFD_CLOEXEC, 64);
        if exe < 0
            || libc::dup2(ctrl, ZYGOTE_FD) < 0
            || libc::fcntl(ZYGOTE_FD, libc::F_SETFD, 0) < 0
        {
            fail();
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            fail();
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
        a.push(std::ptr::null());
        let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
        e.push(std::ptr::null());
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            a.as_ptr(),
            e.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    fail()
}

/// A slot's group as the spawner made it (see `Server::group_generations`).
struct SlotGroup {
    generation: u64,
    identity: Option<Vec<(u64, u64)>>,
}
