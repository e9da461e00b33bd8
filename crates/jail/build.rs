//! Builds the step init (`stepinit/main.rs`): a static binary of a few kilobytes, without the
//! standard library, that the jail embeds and executes from a sealed memfd (see
//! `src/stepinit.rs`). Only for x86_64 Linux; elsewhere a jail's last step keeps forking.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(step_init)");
    println!("cargo::rerun-if-changed=stepinit/main.rs");
    println!("cargo::rerun-if-changed=src/record.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return;
    }
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--target",
            &target,
            "--crate-type",
            "bin",
        ])
        .args(["--crate-name", "runcell_step_init"])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "debuginfo=0", "-C", "strip=symbols"])
        .args([
            "-C",
            "relocation-model=static",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .arg("-o")
        .arg(out.join("runcell-step-init"))
        .arg("stepinit/main.rs")
        .output()
        .expect("run rustc for the step init");
    if !output.status.success() {
        panic!(
            "building the step init (stepinit/main.rs) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!("cargo::rustc-cfg=step_init");
}
