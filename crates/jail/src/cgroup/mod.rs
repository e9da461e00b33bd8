//! Control groups: one per jail, holding its kernel-enforced budget (memory including tmpfs,
//! tasks, CPU bandwidth) and its measurements (CPU time, peak memory, OOM kills, refused
//! forks). cgroup v1 and v2 sit behind the one small [`Cgroup`] trait.

mod v1;
mod v2;

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::CgroupLimits;

/// Name of the parent group under which runcell creates one group per jail slot.
pub const PARENT: &str = "runcell";

/// The most an empty group may still be charged for and hold another jail (see
/// [`CgroupRoot::create`]). What stays charged once a jail's processes are gone is the kernel's
/// cache of what they looked at first (dentries, inodes, pages of files nobody had read yet):
/// 8–200 KiB after typical runs. It counts in the next jail's memory use until the kernel
/// reclaims it, so it is bounded here: a group charged for more is removed and made anew.
pub const REUSE_MAX_CHARGE: u64 = 1 << 20;

/// What the kernel measured for a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time of every task in the group, in nanoseconds, since the group was taken for its
    /// jail ([`Cgroup::restart_counters`]).
    pub cpu_ns: u64,
    /// Highest memory use since the last [`Cgroup::reset_peak`], in bytes.
    pub memory_peak: u64,
    /// Current memory use, in bytes.
    pub memory_current: u64,
    /// Processes killed by the out-of-memory killer since the group was taken for its jail.
    pub oom_kills: u64,
    /// Forks or clones refused because of the task limit since the group was taken for its
    /// jail.
    pub task_limit_hits: u64,
}

/// The kernel's cumulative counters of a group (which cannot be reset) as they stood when
/// its jail took it: a group is used again by later jails of its slot, and what each jail is
/// told counts from its own start.
#[derive(Debug, Default)]
pub(crate) struct Origin {
    cpu_ns: std::sync::atomic::AtomicU64,
    oom_kills: std::sync::atomic::AtomicU64,
    task_limit_hits: std::sync::atomic::AtomicU64,
}

impl Origin {
    pub(crate) fn set(&self, raw: &CgroupStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.cpu_ns.store(raw.cpu_ns, Relaxed);
        self.oom_kills.store(raw.oom_kills, Relaxed);
        self.task_limit_hits.store(raw.task_limit_hits, Relaxed);
    }

    pub(crate) fn cpu_ns(&self, raw: u64) -> u64 {
        raw.saturating_sub(self.cpu_ns.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(crate) fn oom_kills(&self, raw: u64) -> u64 {
        raw.saturating_sub(self.oom_kills.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(crate) fn apply(&self, raw: CgroupStats) -> CgroupStats {
        use std::sync::atomic::Ordering::Relaxed;
        CgroupStats {
            cpu_ns: self.cpu_ns(raw.cpu_ns),
            oom_kills: self.oom_kills(raw.oom_kills),
            task_limit_hits: raw
                .task_limit_hits
                .saturating_sub(self.task_limit_hits.load(Relaxed)),
            ..raw
        }
    }
}

/// One control group of one jail.
pub trait Cgroup: Send + Sync + Debug {
    /// The group's name under [`PARENT`].
    fn name(&self) -> &str;
    /// Moves a process (with all its threads) into the group.
    fn add_process(&self, pid: libc::pid_t) -> io::Result<()>;
    /// Files through which a single-threaded process can move itself into the group by
    /// writing `0` to each, or `None` where the hierarchy has no such fast path.
    ///
    /// Moving a whole process (`add_process`) takes a global lock that waits for an RCU grace
    /// period (milliseconds); a single thread moving itself through cgroup v1's `tasks` file
    /// does not.
    fn self_attach_files(&self) -> io::Result<Option<Vec<std::os::fd::OwnedFd>>>;
    /// Sets memory, task and CPU limits.
    fn set_limits(&self, limits: &CgroupLimits) -> io::Result<()>;
    /// The memory limit (swap never counts: there is none for a jail).
    fn set_memory(&self, bytes: u64) -> io::Result<()>;
    /// The limit on processes and threads.
    fn set_max_tasks(&self, tasks: u32) -> io::Result<()>;
    /// CPU bandwidth: `cpus` CPUs, or unthrottled.
    fn set_cpus(&self, cpus: Option<f64>) -> io::Result<()>;
    /// Changes the limits from `from`, which the group has now (its owner wrote them, or the
    /// spawner made the group with them), to `to`: only what differs is written.
    fn change_limits(&self, from: &CgroupLimits, to: &CgroupLimits) -> io::Result<()> {
        if from.memory_bytes != to.memory_bytes {
            self.set_memory(to.memory_bytes)?;
        }
        if from.max_tasks != to.max_tasks {
            self.set_max_tasks(to.max_tasks)?;
        }
        if from.cpus != to.cpus {
            self.set_cpus(to.cpus)?;
        }
        if from.background != to.background {
            self.set_cpu_weight(to.background)?;
        }
        Ok(())
    }
    /// The group's CPU weight: the lowest (`background`: a jail prepared ahead, or one being
    /// torn down, yields to running programs) or the normal one.
    fn set_cpu_weight(&self, background: bool) -> io::Result<()>;
    /// Restarts peak-memory measurement from the current use.
    fn reset_peak(&self) -> io::Result<()>;
    /// CPU time used so far, in nanoseconds (cheap: called while a program runs).
    fn cpu_ns(&self) -> io::Result<u64>;
    /// All measurements.
    fn stats(&self) -> io::Result<CgroupStats>;
    /// [`CgroupStats::oom_kills`] alone (one file read where `stats` reads five).
    fn oom_kills(&self) -> io::Result<u64>;
    /// Pids of the processes in the group (as seen from the caller's pid namespace).
    fn procs(&self) -> io::Result<Vec<libc::pid_t>>;
    /// Freezes every process in the group (they stop where they are, uninterruptibly, and
    /// use no CPU) and returns once the kernel reports the group frozen; `false` thaws it.
    /// cgroup v2 uses `cgroup.freeze`; v1 the freezer hierarchy, when it is mounted.
    fn set_frozen(&self, frozen: bool) -> io::Result<()>;
    /// Kills every process in the group and removes it, frozen or not. Missing groups are
    /// fine.
    fn remove(&self) -> io::Result<()>;
    /// Kills every process in the group, frozen or not, and returns once none is left. The
    /// group stays (thawed), for another jail of its slot if it is [`Cgroup::reusable`].
    fn empty(&self) -> io::Result<()>;
    /// Whether the group can hold another jail: it exists (in every hierarchy), its
    /// directories are still the ones `identity` names if it is given (see
    /// [`Cgroup::identity`]), and it has no process, no child group, and no more than
    /// [`REUSE_MAX_CHARGE`] bytes charged.
    fn reusable(&self, identity: Option<&[(u64, u64)]>) -> io::Result<bool>;
    /// Makes [`Cgroup::stats`] and [`Cgroup::cpu_ns`] count from now, the peak included (the
    /// kernel's counters of a group that held other jails before cannot be reset).
    fn restart_counters(&self) -> io::Result<()>;
    /// What names the group's directories (device and inode of each): a handle kept across
    /// jails is the same group only while this is unchanged (another runcell process holding
    /// the slot meanwhile may have removed the group and made it again).
    fn identity(&self) -> io::Result<Vec<(u64, u64)>>;
}

/// A group's handle kept for a later jail of its slot, with the group's
/// [`Cgroup::identity`] when it was kept.
pub type KeptGroup = (Box<dyn Cgroup>, Vec<(u64, u64)>);

/// Device and inode of each of `dirs`.
pub(crate) fn dir_identity(dirs: &[PathBuf]) -> io::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    dirs.iter()
        .map(|d| std::fs::metadata(d).map(|m| (m.dev(), m.ino())))
        .collect()
}

/// Whether every group directory of `dirs` exists without a child group (cgroupfs counts
/// subdirectories in a directory's link count, as every filesystem does) and, if `identity`
/// is given, is still the directory it names ([`dir_identity`]): one `statx` per directory.
pub(crate) fn childless_groups(
    dirs: &[PathBuf],
    identity: Option<&[(u64, u64)]>,
) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    if identity.is_some_and(|i| i.len() != dirs.len()) {
        return Ok(false);
    }
    for (i, dir) in dirs.iter().enumerate() {
        let m = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if m.nlink() > 2 || identity.is_some_and(|id| id[i] != (m.dev(), m.ino())) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Polls `file` until `done` accepts its content (the kernel freezes tasks asynchronously).
pub(crate) fn wait_for(file: &Path, what: &str, done: impl Fn(&str) -> bool) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if done(&read_text(file)?) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not become {what} within 10 s", file.display()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Where the cgroup hierarchies are, and which version to use.
#[derive(Debug, Clone)]
pub enum CgroupRoot {
    /// cgroup v1: one mount point per controller we use.
    V1(v1::Mounts),
    /// cgroup v2: where runcell's groups live in the unified hierarchy (see [`v2::Base`]).
    V2(v2::Base),
}

/// The v1 controllers runcell needs, with the limit each one enforces.
const V1_NEEDED: [(&str, &str); 3] = [
    ("memory", "memory"),
    ("pids", "process"),
    ("cpuacct", "CPU time"),
];

impl CgroupRoot {
    /// Finds the hierarchies from `/proc/self/mountinfo` and `/proc/self/cgroup`. cgroup v1
    /// is used when memory, pids and cpuacct are all mounted as v1 controllers; otherwise the
    /// v2 hierarchy must offer memory, pids and cpu where runcell's groups will live. The
    /// error names the missing controller: runcell never runs with a limit it cannot enforce.
    pub fn detect() -> io::Result<CgroupRoot> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::from_mountinfo(&info, &own, &v2::RealFs)
    }

    fn from_mountinfo(info: &str, own: &str, fs: &dyn v2::Fs) -> io::Result<CgroupRoot> {
        let mounts = parse_mountinfo(info);
        if let Some(m) = v1::Mounts::from_mounts(&mounts) {
            return Ok(CgroupRoot::V1(m));
        }
        if let Some((_, mount, _)) = mounts.iter().find(|(t, _, _)| t == "cgroup2") {
            let base = v2::Base::locate(mount, own, fs);
            base.check_controllers(fs)?;
            return Ok(CgroupRoot::V2(base));
        }
        let v1_missing: Vec<String> = V1_NEEDED
            .iter()
            .filter(|(c, _)| {
                !mounts
                    .iter()
                    .any(|(t, _, opts)| t == "cgroup" && opts.split(',').any(|o| o == *c))
            })
            .map(|(c, what)| format!("{c} (the {what} limit)"))
            .collect();
        Err(io::Error::other(format!(
            "no usable cgroup hierarchy: no cgroup v2 is mounted, and cgroup v1 lacks the {} \
             controller{}; runcell refuses to run jails whose limits it cannot enforce",
            v1_missing.join(" and "),
            if v1_missing.len() > 1 { "s" } else { "" }
        )))
    }

    /// Makes the hierarchy ready for [`CgroupRoot::create`], once, in the process that creates
    /// groups (the spawner). On cgroup v2 below the root this moves every process of the base
    /// group into a leaf (`runcell-supervisor`: "no internal processes") and enables the
    /// controllers for its children; nothing to do on v1.
    pub fn prepare(&self) -> io::Result<()> {
        match self {
            CgroupRoot::V1(_) => Ok(()),
            CgroupRoot::V2(b) => b.prepare(),
        }
    }

    /// Where runcell's groups live, for diagnostics: `cgroup v2 at /sys/fs/cgroup/…/runcell`.
    pub fn describe(&self) -> String {
        match self {
            CgroupRoot::V1(m) => format!(
                "cgroup v1 (memory at {}, pids at {}, cpuacct at {})",
                m.memory.display(),
                m.pids.display(),
                m.cpuacct.display()
            ),
            CgroupRoot::V2(b) => format!("cgroup v2 at {}", b.dir.join(PARENT).display()),
        }
    }

    /// Human-readable version, for diagnostics.
    pub fn version(&self) -> &'static str {
        match self {
            CgroupRoot::V1(_) => "v1",
            CgroupRoot::V2(_) => "v2",
        }
    }

    /// The group `name` with `limits`: the existing group of that name if it is
    /// [`Cgroup::reusable`] (an earlier jail of the same slot emptied it), limited anew;
    /// otherwise a new one, a stale group of that name removed first. Either way its peak and
    /// counters start when the jail's owner takes it ([`Cgroup::restart_counters`]).
    ///
    /// Using a group again spares the kernel its creation and, above all, its removal: taking
    /// a memory group offline walks every memory-accounted cache list of every filesystem
    /// mounted on the host (each jail mounts several), ≈ 5 % of all the CPU time under load
    /// (docs/benchmarks.md).
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> io::Result<Box<dyn Cgroup>> {
        self.create_anew(name, limits)
    }

    /// As [`CgroupRoot::create`], through `kept` (the handle an earlier jail of the slot used,
    /// with its files still open, and the group's [`Cgroup::identity`] then) when it still
    /// names the group: a group used again is then limited without opening its files anew.
    /// Says whether it was (`true`: the group is the one `kept` named).
    pub fn create_reusing(
        &self,
        kept: Option<KeptGroup>,
        name: &str,
        limits: &CgroupLimits,
    ) -> io::Result<(Box<dyn Cgroup>, bool)> {
        if let Some((group, identity)) = kept
            && group.name() == name
            && matches!(group.reusable(Some(&identity)), Ok(true))
            && group.set_limits(limits).is_ok()
        {
            return Ok((group, true));
        }
        self.create_anew(name, limits).map(|g| (g, false))
    }

    fn create_anew(&self, name: &str, limits: &CgroupLimits) -> io::Result<Box<dyn Cgroup>> {
        let group = self.open(name)?;
        // A limit below what is still charged, say, makes a new group instead.
        if group.reusable(None)? && group.set_limits(limits).is_ok() {
            return Ok(group);
        }
        group.remove()?;
        match self {
            CgroupRoot::V1(m) => m.create_dirs(name)?,
            CgroupRoot::V2(b) => b.create_dirs(name)?,
        }
        let group = self.open(name)?;
        if let Err(e) = group.set_limits(limits) {
            let _ = group.remove();
            return Err(e);
        }
        Ok(group)
    }

    /// A handle on an existing group (creating nothing).
    pub fn open(&self, name: &str) -> io::Result<Box<dyn Cgroup>> {
        Ok(match self {
            CgroupRoot::V1(m) => Box::new(v1::Group::new(m, name)),
            CgroupRoot::V2(b) => Box::new(v2::Group::new(&b.dir, name)),
        })
    }

    /// Names of the groups that exist under [`PARENT`].
    pub fn list(&self) -> io::Result<Vec<String>> {
        let dir = match self {
            CgroupRoot::V1(m) => m.pids.join(PARENT),
            CgroupRoot::V2(b) => b.dir.join(PARENT),
        };
        let mut names = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e?;
                    if e.file_type()?.is_dir() {
                        names.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        names.sort();
        Ok(names)
    }
}

/// (fstype, mount point, super options) of every mount in a mountinfo text.
pub(crate) fn parse_mountinfo(info: &str) -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fstype), Some(_source), Some(opts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        out.push((
            fstype.to_string(),
            PathBuf::from(unescape_mountinfo(mount_point)),
            opts.to_string(),
        ));
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a cgroup file with a single number (or `max`, returned as `u64::MAX`).
/// The content of a (small) cgroup file. Not `fs::read_to_string`, which first asks the file
/// for its size (a `statx` each time, and a cgroup file's size is always 0).
pub(crate) fn read_text(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(u64::MAX)
        .read_to_string(&mut s)?;
    Ok(s)
}

pub(crate) fn read_u64(path: &Path) -> io::Result<u64> {
    let s = read_text(path)?;
    parse_u64(s.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: unexpected content {s:?}", path.display()),
        )
    })
}

/// A cgroup file that is read often (every measurement: a run takes a dozen), opened once and
/// then read with `pread` from offset 0, which makes the kernel generate it anew: each open of
/// a cgroup file is a path walk and an allocation in the kernel. The files kept are control
/// files whose content one `show` call makes whole (a counter, a few `key value` lines): a
/// read returns all of it that fits, so a read shorter than the buffer is the end, and no
/// second read is needed to find it.
/// A file that is written often (a reset, a weight) is kept open for writing the same way:
/// cgroupfs takes each write whole, wherever the offset is.
#[derive(Debug, Default)]
pub(crate) struct KeptFile {
    file: std::sync::OnceLock<std::fs::File>,
    /// Opened for writing too ([`KeptFile::writable`]).
    write: bool,
}

impl KeptFile {
    /// A kept file that is also written ([`KeptFile::write`]).
    pub(crate) fn writable() -> KeptFile {
        KeptFile {
            file: std::sync::OnceLock::new(),
            write: true,
        }
    }

    fn file(&self, path: &Path) -> io::Result<&std::fs::File> {
        match self.file.get() {
            Some(f) => Ok(f),
            None => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(self.write)
                    .open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                Ok(self.file.get_or_init(|| f))
            }
        }
    }

    /// Writes `value` to the file (at offset 0, in one write, as [`write_file`] does).
    pub(crate) fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let n = self
            .file(path)?
            .write_at(value.as_bytes(), 0)
            .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("write {}: short write", path.display()),
            ));
        }
        Ok(())
    }

    pub(crate) fn read(&self, path: &Path) -> io::Result<String> {
        self.read_to_end(path, true)
    }

    /// Reads a file of several records (`cgroup.procs`, a pid per line), which a read may
    /// return in parts: until a read returns nothing.
    pub(crate) fn read_records(&self, path: &Path) -> io::Result<String> {
        self.read_to_end(path, false)
    }

    fn read_to_end(&self, path: &Path, whole: bool) -> io::Result<String> {
        use std::os::unix::fs::FileExt;
        let f = self.file(path)?;
        let mut out = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        loop {
            let n = f.read_at(&mut buf, out.len() as u64)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if whole && n < buf.len() {
                break;
            }
            if out.len() > 1 << 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: longer than 64 KiB", path.display()),
                ));
            }
        }
        String::from_utf8(out).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not UTF-8", path.display()),
            )
        })
    }

    /// A descriptor of the file (opened once), for another process to write to.
    pub(crate) fn descriptor(&self, path: &Path) -> io::Result<std::os::fd::OwnedFd> {
        Ok(self.file(path)?.try_clone()?.into())
    }

    /// The pids a `cgroup.procs` file lists.
    pub(crate) fn read_procs(&self, path: &Path) -> io::Result<Vec<libc::pid_t>> {
        Ok(self
            .read_records(path)?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// The file's single number (or `max`, as `u64::MAX`).
    pub(crate) fn read_u64(&self, path: &Path) -> io::Result<u64> {
        let s = self.read(path)?;
        parse_u64(s.trim()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unexpected content {s:?}", path.display()),
            )
        })
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    if s == "max" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

/// Value of `key` in a flat-keyed cgroup file (`key value` per line).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key { parse_u64(v.trim()) } else { None }
    })
}

/// Writes a control file, naming the file in the error.
pub(crate) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

/// Pids listed in a `cgroup.procs` file.
pub(crate) fn read_procs(path: &Path) -> io::Result<Vec<libc::pid_t>> {
    match read_text(path) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Kills every process listed in `procs_file` until the group is empty, then removes `dir`.
/// A group can only be removed once its tasks are gone; processes that fork while we kill are
/// caught by the next round.
pub(crate) fn kill_and_rmdir(procs_file: &Path, dir: &Path) -> io::Result<()> {
    kill_all(procs_file, Some(dir))
}

/// Kills every process listed in `procs_file` until the group is empty (and keeps it).
pub(crate) fn kill_until_empty(procs_file: &Path) -> io::Result<()> {
    kill_all(procs_file, None)
}

/// As [`kill_until_empty`], reading the group's `cgroup.procs` through a kept descriptor.
pub(crate) fn kill_until_empty_kept(procs: &KeptFile, procs_file: &Path) -> io::Result<()> {
    kill_all_listed(|| procs.read_procs(procs_file), procs_file, None)
}

fn kill_all(procs_file: &Path, rmdir: Option<&Path>) -> io::Result<()> {
    kill_all_listed(|| read_procs(procs_file), procs_file, rmdir)
}

fn kill_all_listed(
    list: impl Fn() -> io::Result<Vec<libc::pid_t>>,
    procs_file: &Path,
    rmdir: Option<&Path>,
) -> io::Result<()> {
    for round in 0..200 {
        let pids = list()?;
        if pids.is_empty() {
            let Some(dir) = rmdir else {
                return Ok(());
            };
            match std::fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Tasks that just exited may still be attached for a moment.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid from the group; a stale pid at worst gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_micros(if round < 10 {
            200
        } else {
            5000
        }));
    }
    Err(io::Error::other(format!(
        "cgroup {} did not empty after repeated SIGKILL",
        procs_file.parent().unwrap_or(procs_file).display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_INFO: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/pids rw,relatime shared:13 - cgroup cgroup rw,pids
30 25 0:28 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
";

    const V1_COMOUNT_INFO: &str = "\
26 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    const V2_INFO: &str = "\
30 1 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    /// A cgroup tree for detection tests: file contents, and the groups systemd delegated.
    #[derive(Default)]
    struct FakeFs {
        files: std::collections::HashMap<PathBuf, String>,
        delegated: Vec<PathBuf>,
    }

    impl FakeFs {
        /// A v2 tree where `groups` (below /sys/fs/cgroup) offer `controllers`.
        fn v2(controllers: &str, groups: &[&str]) -> FakeFs {
            let mut fs = FakeFs::default();
            let root = Path::new("/sys/fs/cgroup");
            fs.files
                .insert(root.join("cgroup.controllers"), controllers.into());
            for g in groups {
                fs.files
                    .insert(root.join(g).join("cgroup.controllers"), controllers.into());
                fs.files
                    .insert(root.join(g).join("cgroup.type"), "domain\n".into());
            }
            fs
        }
    }

    impl v2::Fs for FakeFs {
        fn read(&self, path: &Path) -> io::Result<String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.contains_key(path)
        }
        fn xattr(&self, path: &Path, name: &str) -> Option<Vec<u8>> {
            (name == "trusted.delegate" && self.delegated.iter().any(|d| d == path))
                .then(|| b"1".to_vec())
        }
    }

    fn v2_base(root: &CgroupRoot) -> &v2::Base {
        match root {
            CgroupRoot::V2(b) => b,
            CgroupRoot::V1(_) => panic!("expected v2"),
        }
    }

    #[test]
    fn detects_v1_with_separate_cpu_and_cpuacct() {
        let root = CgroupRoot::from_mountinfo(V1_INFO, "", &FakeFs::default()).unwrap();
        let CgroupRoot::V1(m) = root else {
            panic!("expected v1")
        };
        assert_eq!(m.memory, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m.cpuacct, Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(m.cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(m.pids, Path::new("/sys/fs/cgroup/pids"));
    }

    #[test]
    fn detects_v1_with_comounted_cpu_cpuacct() {
        let root = CgroupRoot::from_mountinfo(V1_COMOUNT_INFO, "", &FakeFs::default()).unwrap();
        let CgroupRoot::V1(m) = root else {
            panic!("expected v1")
        };
        assert_eq!(m.cpuacct, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            m.cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(m.dirs("x").len(), 3, "co-mounted hierarchy listed once");
    }

    #[test]
    fn v1_without_a_controller_is_refused_naming_it() {
        let info = V1_COMOUNT_INFO
            .lines()
            .filter(|l| !l.contains("pids"))
            .collect::<Vec<_>>()
            .join("\n");
        let err = CgroupRoot::from_mountinfo(&info, "", &FakeFs::default()).unwrap_err();
        assert!(
            err.to_string().contains("pids (the process limit)"),
            "{err}"
        );
    }

    #[test]
    fn detects_v2_at_the_root_without_systemd() {
        let fs = FakeFs::v2("cpuset cpu io memory pids\n", &[]);
        let root = CgroupRoot::from_mountinfo(V2_INFO, "0::/\n", &fs).unwrap();
        let base = v2_base(&root);
        assert_eq!(base.dir, Path::new("/sys/fs/cgroup"));
        assert!(base.is_root);
        assert_eq!(root.describe(), "cgroup v2 at /sys/fs/cgroup/runcell");
    }

    #[test]
    fn v2_without_a_controller_is_refused_naming_it() {
        for (controllers, missing, limit) in [
            ("cpu io pids\n", "memory", "memory limit"),
            ("cpu io memory\n", "pids", "process limit"),
            ("io memory pids\n", "cpu", "CPU bandwidth limit"),
        ] {
            let fs = FakeFs::v2(controllers, &[]);
            let err = CgroupRoot::from_mountinfo(V2_INFO, "0::/\n", &fs).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("does not offer the {missing} controller"))
                    && msg.contains(limit),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_delegated_systemd_service_gets_its_own_subtree() {
        let unit = "system.slice/runcell.service";
        let mut fs = FakeFs::v2("cpu memory pids\n", &["system.slice", unit]);
        fs.delegated.push(Path::new("/sys/fs/cgroup").join(unit));
        let own = format!("0::/{unit}\n");
        let root = CgroupRoot::from_mountinfo(V2_INFO, &own, &fs).unwrap();
        let base = v2_base(&root);
        assert_eq!(base.dir, Path::new("/sys/fs/cgroup").join(unit));
        assert!(!base.is_root);
        // A second spawner of the same server, already moved into the leaf.
        let own = format!("0::/{unit}/{}\n", v2::SUPERVISOR);
        let again = CgroupRoot::from_mountinfo(V2_INFO, &own, &fs).unwrap();
        assert_eq!(v2_base(&again), base);
        // The delegated group must itself offer the controllers.
        let mut fs = FakeFs::v2("cpu memory pids\n", &["system.slice"]);
        fs.files.insert(
            Path::new("/sys/fs/cgroup")
                .join(unit)
                .join("cgroup.controllers"),
            "pids\n".into(),
        );
        fs.delegated.push(Path::new("/sys/fs/cgroup").join(unit));
        let err = CgroupRoot::from_mountinfo(V2_INFO, "0::/system.slice/runcell.service", &fs)
            .unwrap_err();
        assert!(err.to_string().contains("memory controller"), "{err}");
    }

    #[test]
    fn an_undelegated_group_uses_the_root() {
        let scope = "user.slice/user-0.slice/session-1.scope";
        let fs = FakeFs::v2("cpu memory pids\n", &[scope]);
        let root = CgroupRoot::from_mountinfo(V2_INFO, &format!("0::/{scope}\n"), &fs).unwrap();
        let base = v2_base(&root);
        assert_eq!(base.dir, Path::new("/sys/fs/cgroup"));
        assert!(base.is_root);
    }

    #[test]
    fn a_container_namespace_root_is_not_the_real_root() {
        // In a cgroup namespace the mount's root is a group of the host: it has cgroup.type.
        let mut fs = FakeFs::v2("cpu memory pids\n", &[]);
        fs.files.insert(
            PathBuf::from("/sys/fs/cgroup/cgroup.type"),
            "domain\n".into(),
        );
        let root = CgroupRoot::from_mountinfo(V2_INFO, "0::/\n", &fs).unwrap();
        let base = v2_base(&root);
        assert_eq!(base.dir, Path::new("/sys/fs/cgroup"));
        assert!(!base.is_root, "its processes must move into a leaf");
    }

    #[test]
    fn no_hierarchy_is_refused() {
        let err = CgroupRoot::from_mountinfo("", "", &FakeFs::default()).unwrap_err();
        assert!(
            err.to_string().contains("memory (the memory limit)"),
            "{err}"
        );
    }

    #[test]
    fn keyed_values_parse() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(t, "oom_kill"), Some(3));
        assert_eq!(keyed_value("max 7\n", "max"), Some(7));
        assert_eq!(keyed_value("max 7\n", "min"), None);
        assert_eq!(parse_u64("max"), Some(u64::MAX));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trail\04"), r"/trail\04");
    }

    #[test]
    fn a_reused_groups_counters_count_from_its_new_jail() {
        let origin = Origin::default();
        let earlier = CgroupStats {
            cpu_ns: 5_000,
            memory_peak: 900,
            memory_current: 100,
            oom_kills: 2,
            task_limit_hits: 7,
        };
        // A new group: nothing to subtract.
        assert_eq!(origin.apply(earlier), earlier);
        origin.set(&earlier);
        let now = CgroupStats {
            cpu_ns: 5_300,
            memory_peak: 400,
            memory_current: 120,
            oom_kills: 3,
            task_limit_hits: 7,
        };
        assert_eq!(
            origin.apply(now),
            CgroupStats {
                cpu_ns: 300,
                memory_peak: 400,
                memory_current: 120,
                oom_kills: 1,
                task_limit_hits: 0,
            }
        );
        assert_eq!(origin.cpu_ns(5_100), 100);
        // A counter below its origin (never, but not an underflow either).
        assert_eq!(origin.cpu_ns(10), 0);
    }

    #[test]
    fn only_existing_directories_without_subdirectories_are_childless_groups() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let one = |p: &Path| vec![p.to_path_buf()];
        assert!(childless_groups(&one(dir.path()), None).unwrap());
        std::fs::write(dir.path().join("memory.max"), "max").unwrap();
        assert!(childless_groups(&one(dir.path()), None).unwrap());
        // The identity taken now matches; another directory's, or a wrong count, does not.
        let both = vec![dir.path().to_path_buf(), other.path().to_path_buf()];
        let id = dir_identity(&both).unwrap();
        assert!(childless_groups(&both, Some(&id)).unwrap());
        let swapped = [id[1], id[0]];
        assert!(!childless_groups(&both, Some(&swapped)).unwrap());
        assert!(!childless_groups(&both, Some(&id[..1])).unwrap());
        std::fs::create_dir(dir.path().join("child")).unwrap();
        assert!(!childless_groups(&one(dir.path()), None).unwrap());
        assert!(!childless_groups(&both, Some(&id)).unwrap());
        assert!(!childless_groups(&one(&dir.path().join("missing")), None).unwrap());
    }
}
