//! Installing toolchains: Debian packages through apt-get, pip packages into `{prefix}/venv`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::language::Language;

/// The Python that creates the venv: Debian's, never one from pyenv or under /root.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// What [`install`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Debian packages installed by this call.
    pub debian_installed: Vec<String>,
    /// Debian packages that were already installed.
    pub debian_present: Vec<String>,
    /// pip requirements installed by this call.
    pub pip_installed: Vec<String>,
    /// pip requirements already satisfied in the venv.
    pub pip_present: Vec<String>,
    /// Whether `apt-get update` was run.
    pub apt_updated: bool,
    /// Whether `{prefix}/venv` was created.
    pub venv_created: bool,
    /// Ids of the requested languages that are still not [`Language::available`] afterwards
    /// (callers should treat a non-empty list as a failure).
    pub unavailable: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("installing Debian packages needs root (missing: {})", .packages.join(" "))]
    NotRoot { packages: Vec<String> },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Installs the toolchains of `langs`: Debian packages via apt-get (`apt-get update` runs only
/// when a package has no install candidate or the install fails with the current lists), and
/// pip packages into `{prefix}/venv`, created from [`SYSTEM_PYTHON`] if missing. Prints progress
/// to stderr (the tools' own output goes there too, so stdout stays clean). Safe to run again:
/// installed Debian packages (dpkg-query) and satisfied pip requirements are skipped.
pub fn install(langs: &[&Language], prefix: &Path) -> Result<InstallReport, InstallError> {
    let mut report = InstallReport::default();

    let mut debian: Vec<String> = Vec::new();
    let mut pip: Vec<String> = Vec::new();
    for lang in langs {
        for p in &lang.install.debian {
            if !debian.contains(p) {
                debian.push(p.clone());
            }
        }
        for p in &lang.install.pip {
            if !pip.contains(p) {
                pip.push(p.clone());
            }
        }
    }
    if !pip.is_empty() {
        // The venv needs Debian's python3 with its venv module.
        for p in ["python3", "python3-venv"] {
            if !debian.iter().any(|d| d == p) {
                debian.push(p.to_owned());
            }
        }
    }

    if !debian.is_empty() {
        install_debian(&debian, &mut report)?;
    }
    if !pip.is_empty() {
        install_pip(&pip, prefix, &mut report)?;
    }

    report.unavailable = langs
        .iter()
        .filter(|l| !l.available())
        .map(|l| l.id.clone())
        .collect();
    if report.unavailable.is_empty() {
        progress(&format!(
            "toolchains ready: {}",
            langs
                .iter()
                .map(|l| l.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else {
        progress(&format!(
            "still unavailable after install: {}",
            report.unavailable.join(", ")
        ));
    }
    Ok(report)
}

fn progress(msg: &str) {
    eprintln!("runcell runtimes: {msg}");
}

fn install_debian(packages: &[String], report: &mut InstallReport) -> Result<(), InstallError> {
    let installed = dpkg_installed(packages)?;
    let (present, missing): (Vec<String>, Vec<String>) = packages
        .iter()
        .cloned()
        .partition(|p| installed.iter().any(|i| i == base_name(p)));
    report.debian_present = present;
    if missing.is_empty() {
        progress(&format!(
            "Debian packages already installed: {}",
            packages.join(" ")
        ));
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(InstallError::NotRoot { packages: missing });
    }

    let unknown: Vec<&String> = missing.iter().filter(|p| !has_candidate(p)).collect();
    if !unknown.is_empty() {
        progress(&format!(
            "no install candidate for {}: running apt-get update",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        apt_update()?;
        report.apt_updated = true;
    }

    progress(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    if let Err(first) = apt_install(&missing) {
        if report.apt_updated {
            return Err(first);
        }
        // Stale package lists give 404s on download: refresh once and try again.
        progress("apt-get install failed; running apt-get update and retrying");
        apt_update()?;
        report.apt_updated = true;
        apt_install(&missing)?;
    }
    report.debian_installed = missing;
    Ok(())
}

/// `python3:amd64` -> `python3`.
fn base_name(package: &str) -> &str {
    package.split(':').next().unwrap_or(package)
}

/// Names (without architecture) of those `packages` dpkg reports as fully installed.
fn dpkg_installed(packages: &[String]) -> Result<Vec<String>, InstallError> {
    let mut cmd = Command::new("dpkg-query");
    cmd.arg("-W")
        .arg("-f=${Package}\t${db:Status-Status}\n")
        .arg("--")
        .args(packages);
    // Exit status 1 just means some package is unknown to dpkg.
    let out = output(&mut cmd)?;
    let status: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, s)| (p.trim().to_owned(), s.trim().to_owned()))
        .collect();
    Ok(status
        .into_iter()
        .filter(|(_, s)| s == "installed")
        .map(|(p, _)| p)
        .collect())
}

/// Whether apt knows an installable version of `package` with the current lists.
fn has_candidate(package: &str) -> bool {
    let mut cmd = Command::new("apt-cache");
    cmd.arg("policy").arg("--").arg(package);
    let Ok(out) = output(&mut cmd) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .is_some_and(|c| !c.trim().is_empty() && c.trim() != "(none)")
}

fn apt_env(cmd: &mut Command) -> &mut Command {
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("NEEDRESTART_MODE", "a")
}

fn apt_update() -> Result<(), InstallError> {
    let mut cmd = Command::new("apt-get");
    apt_env(&mut cmd).args(["-q", "-o", "DPkg::Lock::Timeout=300", "update"]);
    run_to_stderr(&mut cmd)
}

fn apt_install(packages: &[String]) -> Result<(), InstallError> {
    let mut cmd = Command::new("apt-get");
    apt_env(&mut cmd)
        .args([
            "-q",
            "-y",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
            "install",
            "--",
        ])
        .args(packages);
    run_to_stderr(&mut cmd)
}

fn install_pip(
    requirements: &[String],
    prefix: &Path,
    report: &mut InstallReport,
) -> Result<(), InstallError> {
    let venv = prefix.join("venv");
    let python = venv.join("bin").join("python3");
    if !python.exists() {
        progress(&format!(
            "creating {} with {SYSTEM_PYTHON} -m venv",
            venv.display()
        ));
        std::fs::create_dir_all(prefix).map_err(|source| InstallError::Io {
            path: prefix.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(SYSTEM_PYTHON);
        cmd.args(["-m", "venv", "--"]).arg(&venv);
        run_to_stderr(&mut cmd)?;
        report.venv_created = true;
    }

    let mut missing = Vec::new();
    for req in requirements {
        if pip_satisfied(&python, req) {
            report.pip_present.push(req.clone());
        } else {
            missing.push(req.clone());
        }
    }
    if missing.is_empty() {
        progress(&format!(
            "pip packages already installed in {}: {}",
            venv.display(),
            requirements.join(" ")
        ));
    } else {
        progress(&format!(
            "installing pip packages into {}: {}",
            venv.display(),
            missing.join(" ")
        ));
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--",
        ])
        .args(&missing);
        run_to_stderr(&mut cmd)?;
        report.pip_installed = missing;
    }

    // The jail runs as an unprivileged user: whatever umask root had, the prefix must be
    // readable (and its directories and programs executable) by everyone.
    let mut cmd = Command::new("chmod");
    cmd.args(["-R", "a+rX", "--"]).arg(prefix);
    run_to_stderr(&mut cmd)
}

/// Whether `requirement` (`name`, `name[extra]>=1,<2`) is satisfied in the venv, asking pip's
/// vendored `packaging` through the venv's Python so the version specifier is honoured.
fn pip_satisfied(python: &Path, requirement: &str) -> bool {
    const CHECK: &str = "import sys\n\
        from importlib.metadata import version, PackageNotFoundError\n\
        from pip._vendor.packaging.requirements import Requirement\n\
        r = Requirement(sys.argv[1])\n\
        try:\n    v = version(r.name)\n\
        except PackageNotFoundError:\n    sys.exit(1)\n\
        sys.exit(0 if r.specifier.contains(v, prereleases=True) else 1)\n";
    let mut cmd = Command::new(python);
    cmd.args(["-I", "-c", CHECK, requirement]);
    output(&mut cmd).is_ok_and(|o| o.status.success())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_error(cmd: &Command, source: io::Error) -> InstallError {
    InstallError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    }
}

/// Runs `cmd` with its output captured (stdin closed); a non-zero exit is not an error here.
fn output(cmd: &mut Command) -> Result<Output, InstallError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))
}

/// Runs `cmd` with both its stdout and stderr sent to our stderr; fails on a non-zero exit.
fn run_to_stderr(cmd: &mut Command) -> Result<(), InstallError> {
    let to_stderr = || -> Result<Stdio, InstallError> {
        io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(Stdio::from)
            .map_err(|source| InstallError::Io {
                path: PathBuf::from("/dev/stderr"),
                source,
            })
    };
    cmd.stdin(Stdio::null())
        .stdout(to_stderr()?)
        .stderr(to_stderr()?);
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(InstallError::Failed {
            command: describe(cmd),
            status: status.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        assert_eq!(base_name("python3:amd64"), "python3");
        assert_eq!(base_name("g++"), "g++");
    }

    #[test]
    fn dpkg_query_sees_installed_and_unknown_packages() {
        if Command::new("dpkg-query")
            .arg("--version")
            .output()
            .is_err()
        {
            return; // not a Debian host
        }
        let pkgs = vec!["dpkg".to_owned(), "runcell-no-such-package".to_owned()];
        let installed = dpkg_installed(&pkgs).unwrap();
        assert_eq!(installed, vec!["dpkg".to_owned()]);
    }

    #[test]
    fn failed_command_is_described() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 7"]);
        let e = run_to_stderr(&mut cmd).unwrap_err().to_string();
        assert!(e.contains("/bin/sh -c exit 7") && e.contains('7'), "{e}");
        let mut cmd = Command::new("/nonexistent/tool");
        assert!(matches!(
            run_to_stderr(&mut cmd),
            Err(InstallError::Spawn { .. })
        ));
    }

    #[test]
    fn nothing_to_install_is_a_no_op() {
        let report = install(&[], Path::new("/nonexistent/prefix")).unwrap();
        assert_eq!(report, InstallReport::default());
    }
}
