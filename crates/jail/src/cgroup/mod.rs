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

/// What the kernel measured for a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time of every task in the group, in nanoseconds, since the group was created.
    pub cpu_ns: u64,
    /// Highest memory use since the last [`Cgroup::reset_peak`], in bytes.
    pub memory_peak: u64,
    /// Current memory use, in bytes.
    pub memory_current: u64,
    /// Processes killed by the out-of-memory killer since the group was created.
    pub oom_kills: u64,
    /// Forks or clones refused because of the task limit since the group was created.
    pub task_limit_hits: u64,
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
    /// Restarts peak-memory measurement from the current use.
    fn reset_peak(&self) -> io::Result<()>;
    /// CPU time used so far, in nanoseconds (cheap: called while a program runs).
    fn cpu_ns(&self) -> io::Result<u64>;
    /// All measurements.
    fn stats(&self) -> io::Result<CgroupStats>;
    /// Pids of the processes in the group (as seen from the caller's pid namespace).
    fn procs(&self) -> io::Result<Vec<libc::pid_t>>;
    /// Kills every process in the group and removes it. Missing groups are fine.
    fn remove(&self) -> io::Result<()>;
}

/// Where the cgroup hierarchies are, and which version to use.
#[derive(Debug, Clone)]
pub enum CgroupRoot {
    /// cgroup v1: one mount point per controller we use.
    V1(v1::Mounts),
    /// cgroup v2: the unified hierarchy's mount point.
    V2(PathBuf),
}

impl CgroupRoot {
    /// Finds the hierarchies from `/proc/self/mountinfo`. cgroup v1 is used when memory,
    /// pids and cpuacct are all mounted as v1 controllers; otherwise the v2 hierarchy must
    /// offer memory, pids and cpu.
    pub fn detect() -> io::Result<CgroupRoot> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        Self::from_mountinfo(&info, |p| std::fs::read_to_string(p))
    }

    fn from_mountinfo(
        info: &str,
        read: impl Fn(&Path) -> io::Result<String>,
    ) -> io::Result<CgroupRoot> {
        let mounts = parse_mountinfo(info);
        if let Some(m) = v1::Mounts::from_mounts(&mounts) {
            return Ok(CgroupRoot::V1(m));
        }
        for (fstype, path, _) in &mounts {
            if fstype == "cgroup2" {
                let controllers = read(&path.join("cgroup.controllers")).unwrap_or_default();
                let have: Vec<&str> = controllers.split_whitespace().collect();
                if ["memory", "pids", "cpu"].iter().all(|c| have.contains(c)) {
                    return Ok(CgroupRoot::V2(path.clone()));
                }
            }
        }
        Err(io::Error::other(
            "no usable cgroup hierarchy: need cgroup v1 memory, pids and cpuacct controllers, \
             or cgroup v2 with memory, pids and cpu",
        ))
    }

    /// Human-readable version, for diagnostics.
    pub fn version(&self) -> &'static str {
        match self {
            CgroupRoot::V1(_) => "v1",
            CgroupRoot::V2(_) => "v2",
        }
    }

    /// Creates the group `name` (removing a stale group of that name first) with `limits`.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> io::Result<Box<dyn Cgroup>> {
        let group = self.open(name)?;
        group.remove()?;
        match self {
            CgroupRoot::V1(m) => m.create_dirs(name)?,
            CgroupRoot::V2(p) => v2::create_dirs(p, name)?,
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
            CgroupRoot::V2(p) => Box::new(v2::Group::new(p, name)),
        })
    }

    /// Names of the groups that exist under [`PARENT`].
    pub fn list(&self) -> io::Result<Vec<String>> {
        let dir = match self {
            CgroupRoot::V1(m) => m.pids.join(PARENT),
            CgroupRoot::V2(p) => p.join(PARENT),
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
pub(crate) fn read_u64(path: &Path) -> io::Result<u64> {
    let s = std::fs::read_to_string(path)?;
    parse_u64(s.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: unexpected content {s:?}", path.display()),
        )
    })
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
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Kills every process listed in `procs_file` until the group is empty, then removes `dir`.
/// A group can only be removed once its tasks are gone; processes that fork while we kill are
/// caught by the next round.
pub(crate) fn kill_and_rmdir(procs_file: &Path, dir: &Path) -> io::Result<()> {
    for round in 0..200 {
        let pids = read_procs(procs_file)?;
        if pids.is_empty() {
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
        dir.display()
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

    #[test]
    fn detects_v1_with_separate_cpu_and_cpuacct() {
        let root = CgroupRoot::from_mountinfo(V1_INFO, |_| Ok(String::new())).unwrap();
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
        let root = CgroupRoot::from_mountinfo(V1_COMOUNT_INFO, |_| Ok(String::new())).unwrap();
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
    fn detects_v2_only_with_needed_controllers() {
        let root =
            CgroupRoot::from_mountinfo(V2_INFO, |_| Ok("cpuset cpu io memory pids\n".into()))
                .unwrap();
        assert!(matches!(root, CgroupRoot::V2(p) if p == Path::new("/sys/fs/cgroup")));
        assert!(CgroupRoot::from_mountinfo(V2_INFO, |_| Ok("cpu io\n".into())).is_err());
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
}
