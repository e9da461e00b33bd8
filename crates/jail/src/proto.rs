//! Messages between the client, the spawner and the agent inside each jail, over
//! `SOCK_SEQPACKET` unix sockets (one message per packet, JSON, with descriptors attached as
//! `SCM_RIGHTS`). Also the fixed-size records a step writes to its status pipe.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{CgroupLimits, JailConfig, ProcessSpec};
use crate::error::{JailError, WireError};

/// Largest message accepted (a process spec with a large environment fits easily).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Most descriptors attached to one message (a zygote's fork request: a control socket, a
/// sync pipe, up to six overlays and a `tasks` file per cgroup v1 hierarchy).
pub const MAX_FDS: usize = 16;

/// Client → spawner.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SpawnerRequest {
    Prepare {
        config: ConfigRef,
        limits: CgroupLimits,
        /// Fork the jail from this zygote (see [`crate::zygote`]) instead of the spawner.
        #[serde(default)]
        zygote: Option<u64>,
    },
    /// Starts a zygote; answered with `Zygote`.
    StartZygote {
        spec: crate::zygote::ZygoteSpec,
    },
    /// Stops a zygote once its last jail is destroyed (it forks no more); answered with
    /// `Destroyed`.
    StopZygote {
        id: u64,
    },
    Destroy {
        jail: u64,
    },
    /// Kills the jails and is answered at once with `Destroyed`: each one's slot and group
    /// are freed once its processes are gone, while the spawner serves other requests.
    Release {
        jails: Vec<u64>,
    },
}

/// A jail's configuration in a [`SpawnerRequest::Prepare`]: whole the first time a client
/// sends it, then by the id the client gave it. A configuration is a few kilobytes of JSON
/// (the binds, the generated files) that every jail of a language repeats; by reference
/// neither side encodes, decodes or validates it again. The client and the spawner each keep
/// the last [`CONFIGS_HELD`] configurations sent, by one rule ([`hold`]), so they hold the same
/// ids; requests are answered one at a time in the order they were sent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ConfigRef {
    New { id: u64, config: JailConfig },
    Held(u64),
}

/// How many configurations the client and the spawner keep (a server uses one per language
/// and kind of jail in use).
pub(crate) const CONFIGS_HELD: usize = 16;

/// Items by id, oldest first (see [`hold`]).
pub(crate) type Held<T> = std::collections::VecDeque<(u64, T)>;

/// Adds `item` as `id`, forgetting the oldest beyond `kept`: the one rule both ends of a
/// channel that sends things once and then by id follow, so that they hold the same ids.
pub(crate) fn hold<T>(list: &mut Held<T>, id: u64, item: T, kept: usize) {
    list.push_back((id, item));
    if list.len() > kept {
        list.pop_front();
    }
}

/// The jail configurations a client sent the spawner, which holds the same ones by the same
/// ids (see [`ConfigRef`]).
#[derive(Debug, Default)]
pub(crate) struct SentConfigs {
    last: u64,
    held: Held<JailConfig>,
}

impl SentConfigs {
    /// How to send `config` now: by the id of the held one equal to it, or whole (validated)
    /// under a new id, which it holds from then on. Called in the turn that sends it, so
    /// the spawner receives the configurations in the order they were held.
    pub(crate) fn reference(&mut self, config: &JailConfig) -> Result<ConfigRef, JailError> {
        if let Some((id, _)) = self.held.iter().find(|(_, held)| held == config) {
            return Ok(ConfigRef::Held(*id));
        }
        config.validate()?;
        self.last += 1;
        hold(&mut self.held, self.last, config.clone(), CONFIGS_HELD);
        Ok(ConfigRef::New {
            id: self.last,
            config: config.clone(),
        })
    }
}

/// The configurations a client sent the spawner, by id, each validated once. An invalid one
/// is refused and not held, as the client, which validates before it holds, holds none.
#[derive(Debug, Default)]
pub(crate) struct HeldConfigs {
    held: Held<Arc<JailConfig>>,
}

impl HeldConfigs {
    /// The configuration a prepare request names: held from an earlier request, or sent
    /// whole, then validated and held.
    pub(crate) fn resolve(&mut self, config: ConfigRef) -> Result<Arc<JailConfig>, JailError> {
        match config {
            ConfigRef::New { id, config } => {
                config.validate()?;
                let config = Arc::new(config);
                hold(&mut self.held, id, Arc::clone(&config), CONFIGS_HELD);
                Ok(config)
            }
            ConfigRef::Held(id) => match self.held.iter().find(|(held, _)| *held == id) {
                Some((_, config)) => Ok(Arc::clone(config)),
                None => Err(JailError::Spawner(format!(
                    "the spawner holds no jail configuration {id}"
                ))),
            },
        }
    }
}

/// Spawner → client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SpawnerReply {
    /// Sent once when the spawner is ready; names the cgroup version in use.
    Hello {
        /// "v1" or "v2".
        cgroup: String,
        /// Where jails' groups live, for the operator (`CgroupRoot::describe`).
        cgroup_place: String,
    },
    /// Descriptors: agent control socket, agent pidfd, workspace directory (`O_PATH`), and
    /// the runtime directory (`O_PATH`) of jails with shared mounts.
    Prepared(PreparedInfo),
    Destroyed,
    /// A zygote is ready: its id and the interpreter's version (its first word).
    Zygote {
        id: u64,
        version: String,
    },
    Error(WireError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreparedInfo {
    pub jail: u64,
    pub slot: u32,
    /// Host uid and gid of the program (uid 1000 inside).
    pub program_id: u32,
    pub cgroup: String,
    /// Changes whenever the spawner's handle on the slot's group is made anew (its group may
    /// then be another one of the same name); while it stays the same, the group is the one
    /// an earlier jail of the slot had, and a client may use the handle it kept from that
    /// jail. 0: unknown, open the group anew.
    #[serde(default)]
    pub cgroup_generation: u64,
}

/// Client → agent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum AgentRequest {
    /// Descriptors: stdin, stdout, stderr, status pipe (write end), control pipe (read end:
    /// 4-byte signal numbers for the program's process group).
    Start {
        spec: Box<ProcessSpec>,
        /// The program is the interpreter preloaded by the zygote this jail was forked from
        /// (the spec's `argv` must be the zygote's command).
        preloaded: bool,
        /// The jail's last step (private): the agent becomes its init itself instead of
        /// cloning one, and the jail ends with it (see [`crate::Start::last`]).
        last: bool,
    },
}

/// Agent → spawner (once) and agent → client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum AgentReply {
    /// Setup finished. Descriptors: the workspace directory (`O_PATH`), and the runtime
    /// directory for jails with shared mounts.
    Ready,
    /// Descriptor: a pidfd of the step's init process.
    Started,
    Error(WireError),
}

/// A fresh connected pair of `SOCK_SEQPACKET` unix sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Sends one message with descriptors attached.
pub(crate) fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {MAX_MESSAGE}", body.len()),
        ));
    }
    let iov = [IoSlice::new(&body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and its descriptors; `None` at end of stream.
pub(crate) fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    // Peek at the size first so the buffer fits the packet exactly.
    let mut probe = [0u8; 1];
    let size = loop {
        let mut iov = [IoSliceMut::new(&mut probe)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            None,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(m) => break m.bytes,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if size == 0 {
        // A zero-length read on a seqpacket socket is end of stream; drain it.
        let mut iov = [IoSliceMut::new(&mut probe)];
        let _ = recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty());
        return Ok(None);
    }
    if size > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {size} bytes exceeds {MAX_MESSAGE}"),
        ));
    }
    let mut buf = vec![0u8; size];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel installed these descriptors in our table for
                            // this message; nothing else owns them.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                if m.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "too many descriptors attached to a message",
                    ));
                }
                break (m.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let msg = serde_json::from_slice(&buf[..bytes])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fds)))
}

pub(crate) use crate::record::{RECORD_FINISHED, RECORD_STARTED, StepRecord};

/// `CLOCK_MONOTONIC` in nanoseconds (the clock step records use).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A configuration that differs from the others by its host name.
    fn config(n: usize) -> JailConfig {
        JailConfig {
            binds: vec![crate::config::Bind::same("/usr")],
            symlinks: vec![],
            files: vec![],
            workspace: crate::config::TmpfsSize::mib(16),
            hostname: format!("jail-{n}"),
            shared: None,
            loopback_listener: None,
        }
    }

    /// What the spawner resolves a reference to after a trip through JSON, as on the socket.
    fn over_the_wire(
        spawner: &mut HeldConfigs,
        r: ConfigRef,
    ) -> Result<Arc<JailConfig>, JailError> {
        let bytes = serde_json::to_vec(&r).unwrap();
        spawner.resolve(serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn configurations_are_sent_once_and_then_by_id() {
        let (mut client, mut spawner) = (SentConfigs::default(), HeldConfigs::default());
        let first = client.reference(&config(0)).unwrap();
        assert!(matches!(first, ConfigRef::New { id: 1, .. }), "{first:?}");
        assert_eq!(*over_the_wire(&mut spawner, first).unwrap(), config(0));
        for _ in 0..3 {
            let again = client.reference(&config(0)).unwrap();
            assert!(matches!(again, ConfigRef::Held(1)), "{again:?}");
            assert_eq!(*over_the_wire(&mut spawner, again).unwrap(), config(0));
        }
        // A sequence that makes both ends forget: more configurations than they keep, then
        // the early ones again, interleaved. Every reference resolves to its configuration.
        let order = (0..CONFIGS_HELD + 5).chain([0, 1, 2, 20, 3, 0, 21, 0]);
        for n in order {
            let r = client.reference(&config(n)).unwrap();
            assert_eq!(
                *over_the_wire(&mut spawner, r).unwrap(),
                config(n),
                "config {n}"
            );
        }
        assert_eq!(client.held.len(), CONFIGS_HELD);
        assert_eq!(
            client.held.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            spawner.held.iter().map(|(id, _)| *id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_invalid_or_unknown_configuration_is_refused() {
        let (mut client, mut spawner) = (SentConfigs::default(), HeldConfigs::default());
        let mut bad = config(0);
        bad.hostname = "no spaces".into();
        // The client refuses it before sending, and does not hold it.
        assert!(matches!(
            client.reference(&bad),
            Err(JailError::InvalidConfig(_))
        ));
        assert!(client.held.is_empty());
        // A client that sends it anyway is refused, and the spawner does not hold it either.
        let sent = ConfigRef::New { id: 7, config: bad };
        assert!(matches!(
            over_the_wire(&mut spawner, sent),
            Err(JailError::InvalidConfig(_))
        ));
        for id in [7, 8] {
            match over_the_wire(&mut spawner, ConfigRef::Held(id)) {
                Err(JailError::Spawner(m)) => {
                    assert!(m.contains(&format!("no jail configuration {id}")), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let r = StepRecord {
            kind: RECORD_FINISHED,
            stage: 3,
            errno: -2,
            wait_status: 0x0900,
            time_ns: 123_456_789_012,
        };
        assert_eq!(StepRecord::from_bytes(&r.to_bytes()), r);
    }

    #[test]
    fn messages_carry_descriptors() {
        let (a, b) = seqpacket_pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send(a.as_fd(), &AgentReply::Started, &[f.as_raw_fd()]).unwrap();
        let (msg, fds): (AgentReply, _) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(msg, AgentReply::Started));
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(recv::<AgentReply>(b.as_fd()).unwrap().is_none());
    }
}
