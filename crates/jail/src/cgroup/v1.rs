//! cgroup v1: memory, pids, cpuacct (and cpu for bandwidth) hierarchies, one directory per
//! controller mount.

use std::io;
use std::path::{Path, PathBuf};

use super::{
    Cgroup, CgroupStats, KeptFile, Origin, PARENT, REUSE_MAX_CHARGE, childless_groups,
    dir_identity, keyed_value, kill_and_rmdir, kill_until_empty_kept, write_file,
};
use crate::config::CgroupLimits;

const CFS_PERIOD_US: u64 = 100_000;

/// Mount points of the v1 controllers runcell uses.
#[derive(Debug, Clone)]
pub struct Mounts {
    pub memory: PathBuf,
    pub pids: PathBuf,
    pub cpuacct: PathBuf,
    /// The cpu controller (bandwidth); optional, only needed for a `cpus` limit.
    pub cpu: Option<PathBuf>,
    /// The freezer; optional, only needed to freeze a jail.
    pub freezer: Option<PathBuf>,
}

impl Mounts {
    pub(super) fn from_mounts(mounts: &[(String, PathBuf, String)]) -> Option<Mounts> {
        let find = |ctrl: &str| {
            mounts.iter().find_map(|(fstype, path, opts)| {
                (fstype == "cgroup" && opts.split(',').any(|o| o == ctrl)).then(|| path.clone())
            })
        };
        Some(Mounts {
            memory: find("memory")?,
            pids: find("pids")?,
            cpuacct: find("cpuacct")?,
            cpu: find("cpu"),
            freezer: find("freezer"),
        })
    }

    /// The group's directory in every hierarchy (each hierarchy once).
    pub(super) fn dirs(&self, name: &str) -> Vec<PathBuf> {
        let mut roots = vec![&self.memory, &self.pids, &self.cpuacct];
        if let Some(cpu) = &self.cpu {
            roots.push(cpu);
        }
        if let Some(freezer) = &self.freezer {
            roots.push(freezer);
        }
        let mut out: Vec<PathBuf> = Vec::new();
        for r in roots {
            let d = r.join(PARENT).join(name);
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    pub(super) fn create_dirs(&self, name: &str) -> io::Result<()> {
        for d in self.dirs(name) {
            std::fs::create_dir_all(&d)
                .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", d.display())))?;
        }
        // No swapping of sandbox memory even where swap exists (once: a kept group keeps it).
        let _ = write_file(
            &self
                .memory
                .join(PARENT)
                .join(name)
                .join("memory.swappiness"),
            "0",
        );
        Ok(())
    }
}

/// One jail's group in every v1 hierarchy.
#[derive(Debug)]
pub struct Group {
    name: String,
    memory: PathBuf,
    pids: PathBuf,
    cpuacct: PathBuf,
    cpu: Option<PathBuf>,
    freezer: Option<PathBuf>,
    dirs: Vec<PathBuf>,
    /// `cpuacct.usage`: read every few milliseconds while a program runs.
    cpu_usage: KeptFile,
    /// The files every measurement reads (the peak also written: every run resets it).
    max_usage: KeptFile,
    memsw_max_usage: KeptFile,
    /// `cpu.shares`, written when a run takes the jail and when it is released.
    shares: KeptFile,
    usage: KeptFile,
    oom_control: KeptFile,
    pids_events: KeptFile,
    /// What the spawner reads and writes for each jail of a slot whose group it keeps
    /// (checking the group is free and empty, limiting it, moving the agent in), open once
    /// per handle: `cgroup.procs` and `tasks` of each directory, the limits, the freezer.
    procs_files: Vec<KeptFile>,
    tasks: Vec<KeptFile>,
    limit: KeptFile,
    memsw_limit: KeptFile,
    pids_max: KeptFile,
    cfs_period: KeptFile,
    cfs_quota: KeptFile,
    freezer_state: KeptFile,
    memsw: std::sync::OnceLock<bool>,
    origin: Origin,
}

impl Group {
    pub(super) fn new(m: &Mounts, name: &str) -> Group {
        let at = |root: &Path| root.join(PARENT).join(name);
        Group {
            name: name.to_string(),
            memory: at(&m.memory),
            pids: at(&m.pids),
            cpuacct: at(&m.cpuacct),
            cpu: m.cpu.as_deref().map(at),
            freezer: m.freezer.as_deref().map(at),
            dirs: m.dirs(name),
            cpu_usage: KeptFile::default(),
            max_usage: KeptFile::writable(),
            memsw_max_usage: KeptFile::writable(),
            shares: KeptFile::writable(),
            usage: KeptFile::default(),
            oom_control: KeptFile::default(),
            pids_events: KeptFile::default(),
            procs_files: m.dirs(name).iter().map(|_| KeptFile::default()).collect(),
            tasks: m.dirs(name).iter().map(|_| KeptFile::writable()).collect(),
            limit: KeptFile::writable(),
            memsw_limit: KeptFile::writable(),
            pids_max: KeptFile::writable(),
            cfs_period: KeptFile::writable(),
            cfs_quota: KeptFile::writable(),
            freezer_state: KeptFile::writable(),
            memsw: std::sync::OnceLock::new(),
            origin: Origin::default(),
        }
    }

    /// `cpuacct.usage` as the kernel counts it (since the group was made).
    fn raw_cpu_ns(&self) -> io::Result<u64> {
        self.cpu_usage.read_u64(&self.cpuacct.join("cpuacct.usage"))
    }

    /// Every measurement as the kernel counts it.
    fn raw_stats(&self) -> io::Result<CgroupStats> {
        let oom = self
            .oom_control
            .read(&self.memory.join("memory.oom_control"))?;
        let pids_events = self
            .pids_events
            .read(&self.pids.join("pids.events"))
            .unwrap_or_default();
        Ok(CgroupStats {
            cpu_ns: self.raw_cpu_ns()?,
            memory_peak: self
                .max_usage
                .read_u64(&self.memory.join("memory.max_usage_in_bytes"))?,
            memory_current: self
                .usage
                .read_u64(&self.memory.join("memory.usage_in_bytes"))?,
            oom_kills: keyed_value(&oom, "oom_kill").unwrap_or(0),
            task_limit_hits: keyed_value(&pids_events, "max").unwrap_or(0),
        })
    }

    fn thaw(&self) {
        // A frozen v1 task does not die of SIGKILL until it is thawed.
        if let Some(freezer) = &self.freezer {
            let state = freezer.join("freezer.state");
            if self
                .freezer_state
                .read(&state)
                .is_ok_and(|s| s.trim() != "THAWED")
            {
                let _ = self.freezer_state.write(&state, "THAWED");
            }
        }
    }

    fn has_memsw(&self) -> bool {
        *self
            .memsw
            .get_or_init(|| self.memory.join("memory.memsw.limit_in_bytes").exists())
    }
}

impl Cgroup for Group {
    fn name(&self) -> &str {
        &self.name
    }

    fn add_process(&self, pid: libc::pid_t) -> io::Result<()> {
        for d in &self.dirs {
            write_file(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn self_attach_files(&self) -> io::Result<Option<Vec<std::os::fd::OwnedFd>>> {
        let mut fds = Vec::with_capacity(self.dirs.len());
        for (d, tasks) in self.dirs.iter().zip(&self.tasks) {
            fds.push(tasks.descriptor(&d.join("tasks"))?);
        }
        Ok(Some(fds))
    }

    fn set_limits(&self, limits: &CgroupLimits) -> io::Result<()> {
        self.set_memory(limits.memory_bytes)?;
        self.set_max_tasks(limits.max_tasks)?;
        self.set_cpu_weight(limits.background)?;
        self.set_cpus(limits.cpus)
    }

    // memsw (memory + swap) is set with memory where it exists.
    fn set_memory(&self, bytes: u64) -> io::Result<()> {
        let mem = bytes.to_string();
        let limit_file = self.memory.join("memory.limit_in_bytes");
        let limit = |v: &str| self.limit.write(&limit_file, v);
        if !self.has_memsw() {
            return limit(&mem);
        }
        // memsw may never be below the memory limit: raise memsw first when growing, lower
        // memory first when shrinking.
        let memsw_file = self.memory.join("memory.memsw.limit_in_bytes");
        let memsw = |v: &str| self.memsw_limit.write(&memsw_file, v);
        if bytes > self.memsw_limit.read_u64(&memsw_file)? {
            memsw(&mem)?;
            limit(&mem)
        } else {
            limit(&mem)?;
            memsw(&mem)
        }
    }

    fn set_cpus(&self, cpus: Option<f64>) -> io::Result<()> {
        match (&self.cpu, cpus) {
            (Some(cpu), Some(c)) => {
                self.cfs_period
                    .write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                let quota = ((c * CFS_PERIOD_US as f64).round() as u64).max(1000);
                self.cfs_quota
                    .write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())
            }
            (Some(cpu), None) => self.cfs_quota.write(&cpu.join("cpu.cfs_quota_us"), "-1"),
            (None, Some(_)) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a CPU limit needs the cgroup v1 cpu controller, which is not mounted",
            )),
            (None, None) => Ok(()),
        }
    }

    fn set_max_tasks(&self, tasks: u32) -> io::Result<()> {
        self.pids_max
            .write(&self.pids.join("pids.max"), &tasks.to_string())
    }

    fn set_cpu_weight(&self, background: bool) -> io::Result<()> {
        match &self.cpu {
            Some(cpu) => self.shares.write(
                &cpu.join("cpu.shares"),
                if background { "2" } else { "1024" },
            ),
            None => Ok(()),
        }
    }

    fn reset_peak(&self) -> io::Result<()> {
        self.max_usage
            .write(&self.memory.join("memory.max_usage_in_bytes"), "0")?;
        if self.has_memsw() {
            self.memsw_max_usage
                .write(&self.memory.join("memory.memsw.max_usage_in_bytes"), "0")?;
        }
        Ok(())
    }

    fn cpu_ns(&self) -> io::Result<u64> {
        Ok(self.origin.cpu_ns(self.raw_cpu_ns()?))
    }

    fn stats(&self) -> io::Result<CgroupStats> {
        Ok(self.origin.apply(self.raw_stats()?))
    }

    fn oom_kills(&self) -> io::Result<u64> {
        let oom = self
            .oom_control
            .read(&self.memory.join("memory.oom_control"))?;
        Ok(self
            .origin
            .oom_kills(keyed_value(&oom, "oom_kill").unwrap_or(0)))
    }

    fn procs(&self) -> io::Result<Vec<libc::pid_t>> {
        let mut all = Vec::new();
        for (d, procs) in self.dirs.iter().zip(&self.procs_files) {
            for p in procs.read_procs(&d.join("cgroup.procs"))? {
                if !all.contains(&p) {
                    all.push(p);
                }
            }
        }
        Ok(all)
    }

    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let Some(freezer) = &self.freezer else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "freezing a jail needs the cgroup v1 freezer controller, which is not mounted",
            ));
        };
        let state = freezer.join("freezer.state");
        let want = if frozen { "FROZEN" } else { "THAWED" };
        if self.freezer_state.read(&state)?.trim() == want {
            return Ok(());
        }
        self.freezer_state.write(&state, want)?;
        super::wait_for(&state, want, |s| s.trim() == want)
    }

    fn remove(&self) -> io::Result<()> {
        self.thaw();
        for d in &self.dirs {
            kill_and_rmdir(&d.join("cgroup.procs"), d)?;
        }
        Ok(())
    }

    fn empty(&self) -> io::Result<()> {
        self.thaw();
        for (d, procs) in self.dirs.iter().zip(&self.procs_files) {
            kill_until_empty_kept(procs, &d.join("cgroup.procs"))?;
        }
        Ok(())
    }

    fn reusable(&self, identity: Option<&[(u64, u64)]>) -> io::Result<bool> {
        if !childless_groups(&self.dirs, identity)? {
            return Ok(false);
        }
        if !self.procs()?.is_empty() {
            return Ok(false);
        }
        if let Some(freezer) = &self.freezer
            && self
                .freezer_state
                .read(&freezer.join("freezer.state"))?
                .trim()
                != "THAWED"
        {
            return Ok(false);
        }
        Ok(self
            .usage
            .read_u64(&self.memory.join("memory.usage_in_bytes"))?
            <= REUSE_MAX_CHARGE)
    }

    fn restart_counters(&self) -> io::Result<()> {
        self.reset_peak()?;
        self.origin.set(&self.raw_stats()?);
        Ok(())
    }

    fn identity(&self) -> io::Result<Vec<(u64, u64)>> {
        dir_identity(&self.dirs)
    }
}
