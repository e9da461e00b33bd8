//! cgroup v2: one directory in the unified hierarchy.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Cgroup, CgroupStats, PARENT, keyed_value, read_procs, read_u64, write_file};
use crate::config::CgroupLimits;

const CPU_PERIOD_US: u64 = 100_000;

/// Creates `<root>/runcell/<name>`, enabling the controllers we need for the children of
/// the root and of `runcell`.
pub(super) fn create_dirs(root: &Path, name: &str) -> io::Result<()> {
    let parent = root.join(PARENT);
    std::fs::create_dir_all(&parent)?;
    for dir in [root, parent.as_path()] {
        let want = "+memory +pids +cpu";
        let current = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
        if !["memory", "pids", "cpu"]
            .iter()
            .all(|c| current.split_whitespace().any(|x| x == *c))
        {
            write_file(&dir.join("cgroup.subtree_control"), want)?;
        }
    }
    std::fs::create_dir(parent.join(name))
}

/// One jail's group in the unified hierarchy.
#[derive(Debug)]
pub struct Group {
    name: String,
    dir: PathBuf,
    /// `memory.peak` opened for a per-descriptor reset (Linux 6.12 and later); reads through
    /// this descriptor then report the peak since the reset.
    peak: Mutex<Option<File>>,
}

impl Group {
    pub(super) fn new(root: &Path, name: &str) -> Group {
        Group {
            name: name.to_string(),
            dir: root.join(PARENT).join(name),
            peak: Mutex::new(None),
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
        write_file(
            &self.dir.join("memory.max"),
            &limits.memory_bytes.to_string(),
        )?;
        if self.dir.join("memory.swap.max").exists() {
            write_file(&self.dir.join("memory.swap.max"), "0")?;
        }
        write_file(&self.dir.join("pids.max"), &limits.max_tasks.to_string())?;
        let cpu = match limits.cpus {
            Some(c) => format!(
                "{} {CPU_PERIOD_US}",
                ((c * CPU_PERIOD_US as f64).round() as u64).max(1000)
            ),
            None => format!("max {CPU_PERIOD_US}"),
        };
        write_file(&self.dir.join("cpu.max"), &cpu)
    }

    fn reset_peak(&self) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("memory.peak"))?;
        let mut slot = self.peak.lock().unwrap_or_else(|p| p.into_inner());
        // Kernels before 6.12 refuse the write; the peak then counts from group creation.
        *slot = match f.write_all(b"reset\n") {
            Ok(()) => Some(f),
            Err(_) => None,
        };
        Ok(())
    }

    fn cpu_ns(&self) -> io::Result<u64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        keyed_value(&stat, "usage_usec")
            .map(|us| us.saturating_mul(1000))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cpu.stat usage_usec"))
    }

    fn stats(&self) -> io::Result<CgroupStats> {
        let events = std::fs::read_to_string(self.dir.join("memory.events"))?;
        let pids_events = std::fs::read_to_string(self.dir.join("pids.events")).unwrap_or_default();
        let peak = {
            let slot = self.peak.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(f) => read_number_at(f)?,
                None => read_u64(&self.dir.join("memory.peak"))?,
            }
        };
        Ok(CgroupStats {
            cpu_ns: self.cpu_ns()?,
            memory_peak: peak,
            memory_current: read_u64(&self.dir.join("memory.current"))?,
            oom_kills: keyed_value(&events, "oom_kill").unwrap_or(0),
            task_limit_hits: keyed_value(&pids_events, "max").unwrap_or(0),
        })
    }

    fn procs(&self) -> io::Result<Vec<libc::pid_t>> {
        read_procs(&self.dir.join("cgroup.procs"))
    }

    fn remove(&self) -> io::Result<()> {
        *self.peak.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if !self.dir.exists() {
            return Ok(());
        }
        // cgroup.kill (5.14+) kills every task atomically, forks in flight included.
        let _ = write_file(&self.dir.join("cgroup.kill"), "1");
        super::kill_and_rmdir(&self.dir.join("cgroup.procs"), &self.dir)
    }
}
