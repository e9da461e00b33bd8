//! cgroup v2: one directory in the unified hierarchy.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{
    Cgroup, CgroupStats, KeptFile, Origin, PARENT, REUSE_MAX_CHARGE, childless_groups, keyed_value,
    read_procs, read_u64, write_file,
};
use crate::config::CgroupLimits;

const CPU_PERIOD_US: u64 = 100_000;

/// The controllers runcell needs, with the limit each one enforces.
const NEEDED: [(&str, &str); 3] = [
    ("memory", "memory"),
    ("pids", "process"),
    ("cpu", "CPU bandwidth"),
];

/// The leaf into which [`Base::prepare`] moves the processes of a delegated group, so that the
/// group itself may have children with controllers ("no internal processes").
pub const SUPERVISOR: &str = "runcell-supervisor";

/// What [`Base::locate`] and [`Base::check_controllers`] read: the real filesystem, or a
/// fixture in tests.
pub(super) trait Fs {
    fn read(&self, path: &Path) -> io::Result<String>;
    fn exists(&self, path: &Path) -> bool;
    /// The value of an extended attribute, if set.
    fn xattr(&self, path: &Path, name: &str) -> Option<Vec<u8>>;
}

pub(super) struct RealFs;

impl Fs for RealFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        super::read_text(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn xattr(&self, path: &Path, name: &str) -> Option<Vec<u8>> {
        let path = CString::new(path.as_os_str().as_bytes()).ok()?;
        let name = CString::new(name).ok()?;
        let mut buf = [0u8; 64];
        // SAFETY: both strings are NUL-terminated and outlive the call; the kernel writes at
        // most buf.len() bytes into buf.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }
}

/// Where runcell's groups live in the unified hierarchy: `<dir>/runcell/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The group under which `runcell/` is created (a delegated group, the root of our
    /// cgroup namespace, or the real root).
    pub dir: PathBuf,
    /// Whether `dir` is the hierarchy's real root, which may hold processes and have
    /// children with controllers at the same time.
    pub is_root: bool,
}

impl Base {
    /// Chooses the base from the cgroup2 mount point and `/proc/self/cgroup`:
    ///
    /// * our own group, when systemd delegated it to us (`Delegate=yes`, which marks it with
    ///   the `trusted.delegate` extended attribute); if we are already in its [`SUPERVISOR`]
    ///   leaf (moved there by an earlier spawner of this process), the leaf's parent;
    /// * otherwise the mount point: the real root on a host without systemd or on a systemd
    ///   host where runcell was not given a delegated group (`runcell/` then sits next to
    ///   systemd's slices), or the root of our cgroup namespace in a container.
    pub(super) fn locate(mount: &Path, own_cgroup: &str, fs: &dyn Fs) -> Base {
        let own = own_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim()
            .trim_start_matches('/');
        let mut own_dir = mount.to_path_buf();
        if !own.is_empty() {
            own_dir.push(own);
        }
        if own_dir.file_name().is_some_and(|n| n == SUPERVISOR)
            && let Some(parent) = own_dir.parent()
        {
            own_dir = parent.to_path_buf();
        }
        let is_root = |d: &Path| !fs.exists(&d.join("cgroup.type"));
        let delegated = |d: &Path| {
            ["trusted.delegate", "user.delegate"]
                .iter()
                .any(|a| fs.xattr(d, a).is_some_and(|v| v == b"1"))
        };
        if own_dir != mount && delegated(&own_dir) {
            return Base {
                is_root: false,
                dir: own_dir,
            };
        }
        Base {
            is_root: is_root(mount),
            dir: mount.to_path_buf(),
        }
    }

    /// Fails with a sentence naming the first controller missing where runcell's groups
    /// would be created (a limit runcell could not enforce).
    pub(super) fn check_controllers(&self, fs: &dyn Fs) -> io::Result<()> {
        let file = self.dir.join("cgroup.controllers");
        let have = fs
            .read(&file)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", file.display())))?;
        let have: Vec<&str> = have.split_whitespace().collect();
        for (controller, limit) in NEEDED {
            if !have.contains(&controller) {
                return Err(io::Error::other(format!(
                    "cgroup v2 at {} does not offer the {controller} controller \
                     (cgroup.controllers: {:?}), so runcell cannot enforce the {limit} limit; \
                     enable it in the parent group's cgroup.subtree_control, or run runcell \
                     as a systemd service with Delegate=yes",
                    self.dir.display(),
                    have.join(" ")
                )));
            }
        }
        Ok(())
    }

    /// Makes `dir` an inner group with our controllers enabled for its children: below the
    /// root, first moves every process in it into the [`SUPERVISOR`] leaf.
    pub(super) fn prepare(&self) -> io::Result<()> {
        if !self.is_root {
            let leaf = self.dir.join(SUPERVISOR);
            match std::fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("create {}: {e}", leaf.display()),
                    ));
                }
            }
            // Processes may fork while we move them: repeat until the group is empty.
            for _ in 0..100 {
                let pids = read_procs(&self.dir.join("cgroup.procs"))?;
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    match write_file(&leaf.join("cgroup.procs"), &pid.to_string()) {
                        Ok(()) => {}
                        // Exited meanwhile.
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        enable_controllers(&self.dir)?;
        let parent = self.dir.join(PARENT);
        std::fs::create_dir_all(&parent)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", parent.display())))?;
        enable_controllers(&parent)
    }

    /// Creates `<dir>/runcell/<name>`.
    pub(super) fn create_dirs(&self, name: &str) -> io::Result<()> {
        let parent = self.dir.join(PARENT);
        if !parent.exists() {
            self.prepare()?;
        }
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))
    }
}

/// Enables memory, pids and cpu for the children of `dir`, if they are not already.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&file)?;
    if NEEDED
        .iter()
        .all(|(c, _)| current.split_whitespace().any(|x| x == *c))
    {
        return Ok(());
    }
    write_file(&file, "+memory +pids +cpu")
}

/// One jail's group in the unified hierarchy.
#[derive(Debug)]
pub struct Group {
    name: String,
    dir: PathBuf,
    peak: Mutex<Peak>,
    origin: Origin,
    /// The files every measurement reads.
    cpu_stat: KeptFile,
    current: KeptFile,
    memory_events: KeptFile,
    pids_events: KeptFile,
    /// `cpu.weight`, written when a run takes the jail and when it is released.
    weight: KeptFile,
}

/// How the peak since the last [`Cgroup::reset_peak`] is known.
#[derive(Debug, Default)]
enum Peak {
    /// Since group creation (no reset yet).
    #[default]
    SinceCreation,
    /// `memory.peak` opened and reset through this descriptor (Linux 6.12 and later): reads
    /// through it report the peak since the reset.
    Reset(File),
    /// No per-descriptor reset (`memory.peak` from Linux 5.19, without reset before 6.12, or
    /// no `memory.peak` at all): the group-lifetime peak when the reset was asked for, and
    /// the highest `memory.current` seen since (sampled at the reset, at every CPU time poll
    /// and in [`Cgroup::stats`]).
    Sampled {
        peak_at_reset: Option<u64>,
        max_seen: u64,
    },
}

/// The peak since a reset on a kernel without per-descriptor reset: a group-lifetime peak
/// above the one at the reset was reached after it, so it is exact; otherwise the peak since
/// the reset was no higher than the old one, and the highest sampled use is the best known.
fn sampled_peak(peak_now: Option<u64>, peak_at_reset: Option<u64>, max_seen: u64) -> u64 {
    match (peak_now, peak_at_reset) {
        (Some(now), Some(then)) if now > then => now,
        _ => max_seen,
    }
}

impl Group {
    pub(super) fn new(base: &Path, name: &str) -> Group {
        Group {
            name: name.to_string(),
            dir: base.join(PARENT).join(name),
            peak: Mutex::new(Peak::SinceCreation),
            origin: Origin::default(),
            cpu_stat: KeptFile::default(),
            current: KeptFile::default(),
            memory_events: KeptFile::default(),
            pids_events: KeptFile::default(),
            weight: KeptFile::writable(),
        }
    }

    /// `cpu.stat`'s `usage_usec` in nanoseconds, as the kernel counts it.
    fn raw_cpu_ns(&self) -> io::Result<u64> {
        self.sample();
        let stat = self.cpu_stat.read(&self.dir.join("cpu.stat"))?;
        keyed_value(&stat, "usage_usec")
            .map(|us| us.saturating_mul(1000))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cpu.stat usage_usec"))
    }

    /// Every measurement as the kernel counts it (the peak since the last reset).
    fn raw_stats(&self) -> io::Result<CgroupStats> {
        let events = self.memory_events.read(&self.dir.join("memory.events"))?;
        let pids_events = self
            .pids_events
            .read(&self.dir.join("pids.events"))
            .unwrap_or_default();
        let current = self.memory_current()?;
        let peak = match &*self.peak_state() {
            Peak::Reset(f) => read_number_at(f)?,
            Peak::SinceCreation => optional_u64(&self.dir.join("memory.peak"))?.unwrap_or(current),
            Peak::Sampled {
                peak_at_reset,
                max_seen,
            } => sampled_peak(
                optional_u64(&self.dir.join("memory.peak"))?,
                *peak_at_reset,
                (*max_seen).max(current),
            ),
        };
        Ok(CgroupStats {
            cpu_ns: self.raw_cpu_ns()?,
            memory_peak: peak,
            memory_current: current,
            oom_kills: keyed_value(&events, "oom_kill").unwrap_or(0),
            task_limit_hits: keyed_value(&pids_events, "max").unwrap_or(0),
        })
    }

    fn peak_state(&self) -> std::sync::MutexGuard<'_, Peak> {
        self.peak.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn memory_current(&self) -> io::Result<u64> {
        self.current.read_u64(&self.dir.join("memory.current"))
    }

    /// Folds the current use into a sampled peak.
    fn sample(&self) {
        let mut state = self.peak_state();
        if let Peak::Sampled { max_seen, .. } = &mut *state
            && let Ok(current) = self.memory_current()
        {
            *max_seen = (*max_seen).max(current);
        }
    }
}

fn read_number_at(f: &File) -> io::Result<u64> {
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0)?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "memory.peak"))
}

fn optional_u64(path: &Path) -> io::Result<Option<u64>> {
    match read_u64(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Cgroup for Group {
    fn name(&self) -> &str {
        &self.name
    }

    fn add_process(&self, pid: libc::pid_t) -> io::Result<()> {
        write_file(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn self_attach_files(&self) -> io::Result<Option<Vec<std::os::fd::OwnedFd>>> {
        // cgroup.procs moves the whole thread group and takes the global lock either way.
        Ok(None)
    }

    fn set_limits(&self, limits: &CgroupLimits) -> io::Result<()> {
        self.set_memory(limits.memory_bytes)?;
        if self.dir.join("memory.swap.max").exists() {
            write_file(&self.dir.join("memory.swap.max"), "0")?;
        }
        self.set_max_tasks(limits.max_tasks)?;
        self.set_cpus(limits.cpus)?;
        self.set_cpu_weight(limits.background)
    }

    fn set_memory(&self, bytes: u64) -> io::Result<()> {
        write_file(&self.dir.join("memory.max"), &bytes.to_string())
    }

    fn set_max_tasks(&self, tasks: u32) -> io::Result<()> {
        write_file(&self.dir.join("pids.max"), &tasks.to_string())
    }

    fn set_cpus(&self, cpus: Option<f64>) -> io::Result<()> {
        let cpu = match cpus {
            Some(c) => format!(
                "{} {CPU_PERIOD_US}",
                ((c * CPU_PERIOD_US as f64).round() as u64).max(1000)
            ),
            None => format!("max {CPU_PERIOD_US}"),
        };
        write_file(&self.dir.join("cpu.max"), &cpu)
    }

    fn set_cpu_weight(&self, background: bool) -> io::Result<()> {
        self.weight.write(
            &self.dir.join("cpu.weight"),
            if background { "1" } else { "100" },
        )
    }

    fn reset_peak(&self) -> io::Result<()> {
        let path = self.dir.join("memory.peak");
        let reset = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"reset\n").map(|()| f));
        let state = match reset {
            Ok(f) => Peak::Reset(f),
            // Kernels before 6.12 refuse the write; before 5.19 there is no memory.peak.
            Err(_) => Peak::Sampled {
                peak_at_reset: optional_u64(&path)?,
                max_seen: self.memory_current()?,
            },
        };
        *self.peak_state() = state;
        Ok(())
    }

    fn cpu_ns(&self) -> io::Result<u64> {
        Ok(self.origin.cpu_ns(self.raw_cpu_ns()?))
    }

    fn stats(&self) -> io::Result<CgroupStats> {
        Ok(self.origin.apply(self.raw_stats()?))
    }

    fn oom_kills(&self) -> io::Result<u64> {
        let events = self.memory_events.read(&self.dir.join("memory.events"))?;
        Ok(self
            .origin
            .oom_kills(keyed_value(&events, "oom_kill").unwrap_or(0)))
    }

    fn procs(&self) -> io::Result<Vec<libc::pid_t>> {
        read_procs(&self.dir.join("cgroup.procs"))
    }

    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        write_file(
            &self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        super::wait_for(&self.dir.join("cgroup.events"), want, |events| {
            events.lines().any(|l| l.trim() == want)
        })
    }

    fn remove(&self) -> io::Result<()> {
        *self.peak_state() = Peak::SinceCreation;
        if !self.dir.exists() {
            return Ok(());
        }
        // cgroup.kill (5.14+) kills every task atomically, forks in flight included.
        let _ = write_file(&self.dir.join("cgroup.kill"), "1");
        super::kill_and_rmdir(&self.dir.join("cgroup.procs"), &self.dir)
    }

    fn empty(&self) -> io::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _ = write_file(&self.dir.join("cgroup.kill"), "1");
        super::kill_until_empty(&self.dir.join("cgroup.procs"))?;
        // Frozen or not, the tasks died (a v2 freeze does not stop SIGKILL); the group is
        // left thawed for the next jail (one left frozen is not `reusable`).
        let _ = write_file(&self.dir.join("cgroup.freeze"), "0");
        Ok(())
    }

    fn reusable(&self, identity: Option<&[(u64, u64)]>) -> io::Result<bool> {
        if !childless_groups(std::slice::from_ref(&self.dir), identity)?
            || !self.procs()?.is_empty()
        {
            return Ok(false);
        }
        let events = super::read_text(&self.dir.join("cgroup.events"))?;
        if events.lines().any(|l| l.trim() == "frozen 1") {
            return Ok(false);
        }
        Ok(self.memory_current()? <= REUSE_MAX_CHARGE)
    }

    fn restart_counters(&self) -> io::Result<()> {
        self.reset_peak()?;
        self.origin.set(&self.raw_stats()?);
        Ok(())
    }

    fn identity(&self) -> io::Result<Vec<(u64, u64)>> {
        super::dir_identity(std::slice::from_ref(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_after_the_reset_is_exact_and_an_older_one_falls_back_to_samples() {
        // The compile step peaked at 100; the run step then reached 150: exact.
        assert_eq!(sampled_peak(Some(150), Some(100), 80), 150);
        // The run step stayed below the compile step's peak: the samples are all we know.
        assert_eq!(sampled_peak(Some(100), Some(100), 60), 60);
        // No memory.peak at all (before Linux 5.19).
        assert_eq!(sampled_peak(None, None, 70), 70);
    }
}
