use std::io;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong preparing, starting or supervising a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail needs root (namespaces, cgroups, uid maps).
    #[error("runcell's jail must run as root: {0}")]
    NotRoot(String),
    /// The caller asked for something the jail cannot do.
    #[error("invalid jail configuration: {0}")]
    InvalidConfig(String),
    /// A host-side operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Setting up the jail (namespaces, mounts, privileges) failed inside the jail.
    #[error("jail setup failed at {stage}: {detail}")]
    Setup { stage: String, detail: String },
    /// The spawner process failed or broke the protocol.
    #[error("spawner: {0}")]
    Spawner(String),
    /// Every jail slot (uid pair and cgroup) is in use.
    #[error("no free jail slot: all {0} are in use")]
    NoSlot(u32),
}

impl JailError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        JailError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Adds a description of what was being done to low-level errors.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, JailError>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, JailError> {
        self.map_err(|e| JailError::io(what(), e))
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, JailError> {
        self.map_err(|e| JailError::io(what(), io::Error::from(e)))
    }
}

/// An error as it crosses a process boundary (agent → spawner → client).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub kind: WireErrorKind,
    pub stage: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum WireErrorKind {
    InvalidConfig,
    Setup,
    NoSlot,
    Other,
}

impl From<&JailError> for WireError {
    fn from(e: &JailError) -> Self {
        let kind = match e {
            JailError::InvalidConfig(_) => WireErrorKind::InvalidConfig,
            JailError::Setup { .. } => WireErrorKind::Setup,
            JailError::NoSlot(_) => WireErrorKind::NoSlot,
            _ => WireErrorKind::Other,
        };
        let (stage, message) = match e {
            JailError::InvalidConfig(m) => (String::new(), m.clone()),
            JailError::Setup { stage, detail } => (stage.clone(), detail.clone()),
            // The number of slots, so that the client's error is the spawner's.
            JailError::NoSlot(n) => (String::new(), n.to_string()),
            // (Said once: it becomes a `Spawner` error again on the other side.)
            JailError::Spawner(m) => (String::new(), m.clone()),
            other => (String::new(), other.to_string()),
        };
        WireError {
            kind,
            stage,
            message,
        }
    }
}

impl From<WireError> for JailError {
    fn from(e: WireError) -> Self {
        match e.kind {
            WireErrorKind::InvalidConfig => JailError::InvalidConfig(e.message),
            WireErrorKind::Setup => JailError::Setup {
                stage: e.stage,
                detail: e.message,
            },
            WireErrorKind::NoSlot => JailError::NoSlot(e.message.parse().unwrap_or(0)),
            _ => JailError::Spawner(e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_across_the_process_boundary() {
        let back = |e: JailError| JailError::from(WireError::from(&e));
        assert!(matches!(
            back(JailError::NoSlot(1024)),
            JailError::NoSlot(1024)
        ));
        assert!(matches!(
            back(JailError::InvalidConfig("x".into())),
            JailError::InvalidConfig(m) if m == "x"
        ));
        assert!(matches!(
            back(JailError::Setup {
                stage: "rootfs".into(),
                detail: "d".into()
            }),
            JailError::Setup { stage, detail } if stage == "rootfs" && detail == "d"
        ));
        assert!(matches!(back(JailError::Spawner("s".into())), JailError::Spawner(m) if m == "s"));
    }
}
