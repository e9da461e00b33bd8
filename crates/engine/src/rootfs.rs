//! The filesystem view every jail gets: the host's `/usr` and a short list of `/etc` files,
//! the runtime prefix, and what each language declares it needs. One view serves every
//! language, so any prepared jail can run any of them.

use std::path::{Path, PathBuf};

use runcell_jail::{Bind, JailConfig, JailFile, Symlink, TmpfsSize};
use runcell_lang::Language;

/// `/etc` entries programs commonly read (dynamic linker, time zone, name service and
/// certificate configuration). Each is optional; none holds a secret. Like every `/etc` path a
/// language asks for, they are shown as copies kept current (`Bind::copied`): a jail needs
/// no mount for them.
const ETC: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/inputrc",
    "/etc/bash.bashrc",
    "/etc/magic",
    "/etc/fonts",
];

/// Top-level directories that are links into `/usr` on merged-usr systems.
const TOP_LEVEL: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Builds the jail view for `languages`, with the runtime prefix mounted read-only.
pub fn jail_config(languages: &[Language], prefix: &Path, workspace_mb: u64) -> JailConfig {
    let mut binds = vec![Bind::same("/usr")];
    let mut symlinks = Vec::new();
    for name in TOP_LEVEL {
        let host = Path::new("/").join(name);
        match std::fs::read_link(&host) {
            Ok(target) => symlinks.push(Symlink {
                target: target.to_string_lossy().into_owned(),
                link: host,
            }),
            Err(_) if host.is_dir() => binds.push(Bind::optional(host)),
            Err(_) => {}
        }
    }
    for p in ETC {
        binds.push(Bind::copied(*p));
    }
    binds.push(Bind::optional(prefix));
    let mut extra: Vec<PathBuf> = languages
        .iter()
        .flat_map(|l| l.ro_paths.iter().cloned())
        .collect();
    extra.sort();
    extra.dedup();
    for p in extra {
        if !binds.iter().any(|b| p.starts_with(&b.target)) {
            binds.push(if p.starts_with("/etc") {
                Bind::copied(p)
            } else {
                Bind::optional(p)
            });
        }
    }
    symlinks.push(Symlink {
        target: "/tmp".into(),
        link: "/var/tmp".into(),
    });
    // Warm interpreters' loaders (read-only, in every jail: they hold no secret).
    let files = languages
        .iter()
        .filter_map(|l| l.warm.as_ref()?.preload.clone())
        .map(|(path, contents)| JailFile {
            path,
            contents,
            mode: 0o444,
        })
        .collect();
    JailConfig {
        binds,
        symlinks,
        files,
        workspace: TmpfsSize::mib(workspace_mb),
        hostname: "runcell".into(),
        shared: None,
        loopback_listener: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_is_valid_and_minimal() {
        let reg = runcell_lang::Registry::builtin(Path::new("/opt/runcell")).unwrap();
        let cfg = jail_config(reg.all(), Path::new("/opt/runcell"), 64);
        cfg.validate().unwrap();
        let targets: Vec<_> = cfg.binds.iter().map(|b| b.target.clone()).collect();
        assert!(targets.contains(&PathBuf::from("/usr")));
        assert!(targets.contains(&PathBuf::from("/opt/runcell")));
        for secret in [
            "/etc",
            "/etc/shadow",
            "/root",
            "/home",
            "/var",
            "/etc/ssl/private",
        ] {
            assert!(
                !targets.contains(&PathBuf::from(secret)),
                "{secret} must never be exposed"
            );
        }
        assert!(cfg.binds.iter().all(|b| b.source == b.target));
    }
}
