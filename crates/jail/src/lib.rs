//! runcell's jail: runs untrusted programs on Linux isolation primitives.
//!
//! A jail is a set of fresh namespaces (user, mount, pid, network, IPC, UTS, cgroup) around a
//! read-only root built from an explicit list of host paths, a private tmpfs workspace, a
//! minimal `/dev`, and a cgroup holding its memory, task and CPU budget. Programs in it run as
//! an unprivileged user without capabilities, under `no_new_privs`, Landlock, a seccomp
//! filter and rlimits, each in a pid namespace of its own so that nothing outlives it.
//!
//! Preparing a jail ([`Spawner::prepare`]) is separate from starting a program in it
//! ([`Jail::start`]), so jails can be prepared ahead of requests. Forking happens only in the
//! spawner, a small single-threaded process ([`spawner_main`]); callers may be multithreaded.
//!
//! This crate knows nothing about languages or HTTP.

mod agent;
pub mod cgroup;
mod client;
mod config;
pub mod cpus;
mod error;
mod netns;
mod proto;
mod record;
mod sandboxfs;
pub mod seccomp;
mod skeleton;
pub mod slots;
mod spawner;
mod stepinit;
mod supervise;
mod sys;
mod view;
mod workspace;
pub mod zygote;

pub use agent::Stage;
pub use client::{
    Jail, Killer, OutputTarget, Process, Spawner, SpawnerCommand, Start, StdinSource,
};
pub use config::{
    Bind, CgroupLimits, JAIL_GID, JAIL_UID, JailConfig, JailFile, ProcessSpec, RUNTIME_DIR,
    Rlimits, SharedMounts, StepMode, Symlink, TmpfsSize, WORKSPACE,
};
pub use error::JailError;
pub use netns::JailNet;
pub use proto::monotonic_ns;
pub use sandboxfs::{
    ENCODED_PATH_PREFIX, FileMeta, FsError, FsKind, LIST_MAX_SCANNED, MAX_NAME_BYTES,
    MAX_PATH_BYTES, MAX_WALK_DEPTH, OVERFLOW_ID, REMOVE_ALL_MAX_ENTRIES, SandboxFs, Upload,
    decode_path, encode_path, is_encoded_path,
};
pub use spawner::{SpawnerOptions, spawner_main};
pub use supervise::{Exit, Limit, Outcome, RunLimits, Stream};
pub use workspace::{Entry, EntryKind, Walk, Workspace, WorkspaceError};
pub use zygote::{ZYGOTE_ARG, ZygoteKind, ZygoteSpec, zygote_main};

/// Whether jails of one slot share the slot's kept overlays (one after another): the kernel
/// must copy a detached mount (`open_tree(OPEN_TREE_CLONE)` of an `fsmount`ed one), which
/// Linux 6.1 refuses; there each jail mounts overlays of its own.
pub fn slots_keep_overlays() -> bool {
    sys::clones_detached_mounts()
}
