//! What a jail looks like and what runs in it. These types cross process boundaries
//! (client → spawner → agent), so they are plain data with serde.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::JailError;

/// Uid and gid of the program inside every jail. The agent that sets the jail up is uid 0
/// inside (mapped to an unprivileged host uid, different for every jail slot).
pub const JAIL_UID: u32 = 1000;
/// Gid of the program inside every jail.
pub const JAIL_GID: u32 = 1000;
/// Where the workspace is mounted inside the jail.
pub const WORKSPACE: &str = "/workspace";

/// The filesystem view and fixed properties of a jail. Nothing of the host is visible inside
/// except the read-only binds listed here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JailConfig {
    /// Host paths exposed read-only (and nosuid, nodev) at the same or another path.
    pub binds: Vec<Bind>,
    /// Symbolic links created in the jail's root (for example `/bin -> usr/bin`).
    pub symlinks: Vec<Symlink>,
    /// Small files generated into the jail's root (read-only for the program).
    /// `/etc/passwd`, `/etc/group`, `/etc/hosts` and `/etc/hostname` are generated unless
    /// listed here.
    pub files: Vec<JailFile>,
    /// Size of the writable workspace (a tmpfs mounted at `/workspace`).
    pub workspace: TmpfsSize,
    /// Host name inside the jail.
    pub hostname: String,
    /// Jail-wide `/tmp`, `/dev/shm` and runtime directory, for [`StepMode::Shared`] steps
    /// (a sandbox's long-lived processes). `None` for one-shot jails, whose steps are private.
    pub shared: Option<SharedMounts>,
    /// A TCP port on the jail's loopback (127.0.0.1) where the jail's agent listens from the
    /// start and accepts and closes every connection, so that a readiness probe from inside
    /// the jail (`bash -c 'exec 3<>/dev/tcp/127.0.0.1/PORT'`) succeeds. The agent is in the
    /// jail's cgroup, so what it accepts is charged to the jail. `None`: no listener.
    #[serde(default)]
    pub loopback_listener: Option<u16>,
}

/// Jail-wide writable mounts of a jail that runs shared steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedMounts {
    pub tmp: TmpfsSize,
    pub shm: TmpfsSize,
    /// A private directory at [`RUNTIME_DIR`] (owned by the program's user, not part of the
    /// workspace) for runcell's own files inside the jail, such as kernel sockets.
    pub runtime: TmpfsSize,
}

/// Where the runtime directory of a jail with [`SharedMounts`] is mounted.
pub const RUNTIME_DIR: &str = "/run/runcell";

/// Where a step runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StepMode {
    /// A pid namespace of its own (when the program exits, everything it started dies with
    /// it) and fresh private `/proc`, `/tmp` and `/dev/shm` of these sizes.
    Private { tmp: TmpfsSize, shm: TmpfsSize },
    /// The jail's shared pid namespace, `/proc` and `/tmp` (needs [`JailConfig::shared`]):
    /// what the program starts in the background outlives it, until the jail is destroyed.
    Shared,
}

/// A read-only bind mount of a host path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the jail.
    pub target: PathBuf,
    /// Skip silently if the host path does not exist (or is not readable by the jail).
    pub optional: bool,
    /// Shown as a copy rather than a mount: the spawner copies the source (a directory with
    /// everything beneath it) once into the read-only skeleton every jail of this
    /// configuration starts from, and copies it again when the source changes (it looks at
    /// most once a second, when a jail is prepared: a prepared jail keeps the copy it got).
    /// For small host files that change rarely, such as `/etc`'s: a jail then needs no mount
    /// for them. Copies beyond 32 MiB or 8192 entries in all are bound instead.
    #[serde(default)]
    pub copy: bool,
}

impl Bind {
    /// The same path inside and outside, required to exist.
    pub fn same(path: impl Into<PathBuf>) -> Self {
        let p = path.into();
        Bind {
            source: p.clone(),
            target: p,
            optional: false,
            copy: false,
        }
    }

    /// The same path inside and outside, skipped if missing on the host.
    pub fn optional(path: impl Into<PathBuf>) -> Self {
        Bind {
            optional: true,
            ..Bind::same(path)
        }
    }

    /// The same path inside and outside, shown as a copy (see [`Bind::copy`]), skipped if
    /// missing on the host.
    pub fn copied(path: impl Into<PathBuf>) -> Self {
        Bind {
            copy: true,
            ..Bind::optional(path)
        }
    }
}

/// A symbolic link inside the jail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Symlink {
    /// What the link points to (as stored in the link).
    pub target: String,
    /// Absolute path of the link inside the jail.
    pub link: PathBuf,
}

/// A small generated file inside the jail's read-only root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JailFile {
    /// Absolute path inside the jail.
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

/// Size limits of a tmpfs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TmpfsSize {
    pub bytes: u64,
    pub inodes: u64,
}

impl TmpfsSize {
    pub fn mib(mib: u64) -> Self {
        TmpfsSize {
            bytes: mib << 20,
            inodes: (mib * 64).clamp(1024, 1 << 20),
        }
    }

    pub(crate) fn mount_options(&self, mode: u32, owner: Option<(u32, u32)>) -> String {
        let mut o = format!(
            "size={},nr_inodes={},mode={:o}",
            self.bytes, self.inodes, mode
        );
        if let Some((uid, gid)) = owner {
            o.push_str(&format!(",uid={uid},gid={gid}"));
        }
        o
    }
}

/// Kernel-enforced limits of a whole jail (its cgroup). They can be changed between steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CgroupLimits {
    /// Memory of every process in the jail together, tmpfs pages included.
    pub memory_bytes: u64,
    /// Processes and threads in the jail together (the jail's own two helpers included).
    pub max_tasks: u32,
    /// CPU bandwidth in CPUs (1.5 = one and a half cores); `None` leaves it unthrottled.
    pub cpus: Option<f64>,
    /// Prepared ahead of any run (a pool's jail): the lowest CPU weight, so that preparing
    /// it yields to programs that are running. Setting limits again without it (when a run
    /// takes the jail) restores the normal weight.
    #[serde(default)]
    pub background: bool,
}

/// Per-process resource limits (`setrlimit`). Every one is explicit: there is no
/// "unlimited" default.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_CPU` of each process, in seconds (a backstop: the supervisor enforces the
    /// CPU time of the whole run).
    pub cpu_secs: u64,
    /// `RLIMIT_FSIZE`: largest file a process may write.
    pub file_size_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_STACK` of the main thread.
    pub stack_bytes: u64,
    /// `RLIMIT_NPROC` (a backstop: the cgroup counts tasks).
    pub processes: u64,
    /// `RLIMIT_MEMLOCK`.
    pub locked_memory_bytes: u64,
}

/// One program started in a jail: a "step" (see [`StepMode`]). The workspace is shared by all
/// steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    /// Program and arguments. A program without a `/` is looked up in `PATH` from `env`.
    pub argv: Vec<String>,
    /// The complete environment: nothing is inherited from the host.
    pub env: Vec<(String, String)>,
    /// Working directory inside the jail.
    pub cwd: PathBuf,
    pub rlimits: Rlimits,
    pub mode: StepMode,
}

fn check_abs(what: &str, p: &Path) -> Result<(), JailError> {
    let s = p.as_os_str().as_encoded_bytes();
    if !p.is_absolute() || s.contains(&0) {
        return Err(JailError::InvalidConfig(format!(
            "{what} must be an absolute path without NUL bytes: {}",
            p.display()
        )));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(JailError::InvalidConfig(format!(
            "{what} must not contain '.' or '..': {}",
            p.display()
        )));
    }
    if p == Path::new("/") {
        return Err(JailError::InvalidConfig(format!("{what} must not be '/'")));
    }
    Ok(())
}

fn check_str(what: &str, s: &str) -> Result<(), JailError> {
    if s.contains('\0') {
        return Err(JailError::InvalidConfig(format!(
            "{what} must not contain NUL bytes"
        )));
    }
    Ok(())
}

fn check_tmpfs(what: &str, t: &TmpfsSize) -> Result<(), JailError> {
    if t.bytes < 4096 || t.inodes < 16 {
        return Err(JailError::InvalidConfig(format!(
            "{what} must be at least 4 KiB and 16 inodes"
        )));
    }
    Ok(())
}

/// Paths the jail manages itself; binds and files must not cover them.
const RESERVED: &[&str] = &["/proc", "/dev", "/tmp", WORKSPACE, RUNTIME_DIR];

impl JailConfig {
    pub fn validate(&self) -> Result<(), JailError> {
        for b in &self.binds {
            check_abs("bind source", &b.source)?;
            check_abs("bind target", &b.target)?;
        }
        for s in &self.symlinks {
            check_abs("symlink path", &s.link)?;
            check_str("symlink target", &s.target)?;
        }
        for f in &self.files {
            check_abs("file path", &f.path)?;
            check_str("file contents", &f.contents)?;
        }
        let targets = self
            .binds
            .iter()
            .map(|b| &b.target)
            .chain(self.symlinks.iter().map(|s| &s.link))
            .chain(self.files.iter().map(|f| &f.path));
        for t in targets {
            if RESERVED.iter().any(|r| t.starts_with(r)) {
                return Err(JailError::InvalidConfig(format!(
                    "{} is managed by the jail and cannot be bound or generated",
                    t.display()
                )));
            }
        }
        check_tmpfs("workspace", &self.workspace)?;
        if let Some(s) = &self.shared {
            check_tmpfs("shared /tmp", &s.tmp)?;
            check_tmpfs("shared /dev/shm", &s.shm)?;
            check_tmpfs("runtime directory", &s.runtime)?;
        }
        if self.loopback_listener == Some(0) {
            return Err(JailError::InvalidConfig(
                "the loopback listener needs a port, not 0".into(),
            ));
        }
        if self.hostname.is_empty()
            || self.hostname.len() > 64
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(JailError::InvalidConfig(
                "hostname must be 1 to 64 letters, digits or dashes".into(),
            ));
        }
        Ok(())
    }
}

impl CgroupLimits {
    pub fn validate(&self) -> Result<(), JailError> {
        if self.memory_bytes < (4 << 20) {
            return Err(JailError::InvalidConfig(
                "memory limit must be at least 4 MiB".into(),
            ));
        }
        if self.max_tasks < 3 {
            return Err(JailError::InvalidConfig(
                "task limit must leave room for the program and the jail's two helpers".into(),
            ));
        }
        if let Some(c) = self.cpus
            && !(c.is_finite() && c >= 0.01)
        {
            return Err(JailError::InvalidConfig(
                "cpus must be a number of at least 0.01".into(),
            ));
        }
        Ok(())
    }
}

impl ProcessSpec {
    pub fn validate(&self) -> Result<(), JailError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(JailError::InvalidConfig("argv must name a program".into()));
        }
        for a in &self.argv {
            check_str("argument", a)?;
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(JailError::InvalidConfig(format!(
                    "environment variable name {k:?} must be non-empty and without '='"
                )));
            }
            check_str("environment variable name", k)?;
            check_str("environment variable value", v)?;
        }
        if !self.cwd.is_absolute() || self.cwd.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(JailError::InvalidConfig(
                "working directory must be an absolute path".into(),
            ));
        }
        let r = &self.rlimits;
        for (name, v) in [
            ("cpu_secs", r.cpu_secs),
            ("file_size_bytes", r.file_size_bytes),
            ("open_files", r.open_files),
            ("stack_bytes", r.stack_bytes),
            ("processes", r.processes),
        ] {
            if v == 0 || v == u64::MAX {
                return Err(JailError::InvalidConfig(format!(
                    "rlimit {name} must be a positive finite number"
                )));
            }
        }
        if r.open_files < 8 {
            return Err(JailError::InvalidConfig(
                "rlimit open_files must be at least 8".into(),
            ));
        }
        if let StepMode::Private { tmp, shm } = &self.mode {
            check_tmpfs("/tmp", tmp)?;
            check_tmpfs("/dev/shm", shm)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> ProcessSpec {
        ProcessSpec {
            argv: vec!["/bin/true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: WORKSPACE.into(),
            rlimits: Rlimits {
                cpu_secs: 5,
                file_size_bytes: 1 << 20,
                open_files: 64,
                stack_bytes: 8 << 20,
                processes: 64,
                locked_memory_bytes: 64 << 10,
            },
            mode: StepMode::Private {
                tmp: TmpfsSize::mib(16),
                shm: TmpfsSize::mib(16),
            },
        }
    }

    fn jail() -> JailConfig {
        JailConfig {
            binds: vec![Bind::same("/usr")],
            symlinks: vec![Symlink {
                target: "usr/bin".into(),
                link: "/bin".into(),
            }],
            files: vec![],
            workspace: TmpfsSize::mib(16),
            hostname: "runcell".into(),
            shared: None,
            loopback_listener: None,
        }
    }

    #[test]
    fn valid_configs_pass() {
        jail().validate().unwrap();
        spec().validate().unwrap();
        let mut j = jail();
        j.loopback_listener = Some(44771);
        j.validate().unwrap();
    }

    #[test]
    fn a_loopback_listener_on_port_0_is_refused() {
        let mut j = jail();
        j.loopback_listener = Some(0);
        assert!(j.validate().is_err());
    }

    #[test]
    fn relative_and_dotdot_paths_are_refused() {
        let mut j = jail();
        j.binds.push(Bind::same("usr"));
        assert!(j.validate().is_err());
        let mut j = jail();
        j.binds.push(Bind::same("/usr/../etc"));
        assert!(j.validate().is_err());
    }

    #[test]
    fn reserved_targets_are_refused() {
        let mut j = jail();
        j.binds.push(Bind::same("/proc/self"));
        assert!(j.validate().is_err());
        let mut j = jail();
        j.binds.push(Bind {
            source: "/etc".into(),
            target: "/workspace/etc".into(),
            optional: false,
            copy: false,
        });
        assert!(j.validate().is_err());
    }

    #[test]
    fn zero_and_unlimited_rlimits_are_refused() {
        let mut s = spec();
        s.rlimits.cpu_secs = 0;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.rlimits.file_size_bytes = u64::MAX;
        assert!(s.validate().is_err());
    }

    #[test]
    fn nul_bytes_and_bad_env_names_are_refused() {
        let mut s = spec();
        s.argv.push("a\0b".into());
        assert!(s.validate().is_err());
        let mut s = spec();
        s.env.push(("A=B".into(), "x".into()));
        assert!(s.validate().is_err());
        let mut s = spec();
        s.env.push(("A".into(), "x\0".into()));
        assert!(s.validate().is_err());
    }

    #[test]
    fn cgroup_limits_are_checked() {
        let ok = CgroupLimits {
            memory_bytes: 64 << 20,
            max_tasks: 16,
            cpus: Some(1.0),
            background: false,
        };
        ok.validate().unwrap();
        assert!(
            CgroupLimits {
                memory_bytes: 0,
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(
            CgroupLimits {
                cpus: Some(f64::NAN),
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(CgroupLimits { max_tasks: 1, ..ok }.validate().is_err());
    }
}
