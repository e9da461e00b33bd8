//! A pool of fresh, empty network namespaces made ahead of time.
//!
//! Creating a network namespace is the slowest part of preparing a jail: the kernel
//! serialises it with the teardown of old namespaces, so under churn one creation can take
//! 10 ms or more. A small factory process (a fork of the spawner) creates namespaces in the
//! background, brings their loopback up, and hands them over as descriptors; the spawner
//! enters one just for the `clone` of a jail's agent. Each namespace is used by one jail only
//! and dies with it. The namespaces belong to the host's user namespace, so nothing inside a
//! jail can reconfigure its network. When the pool is empty the spawner falls back to
//! `CLONE_NEWNET`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::proto;
use crate::sys;

pub(crate) struct NetnsPool {
    sock: OwnedFd,
    ready: VecDeque<OwnedFd>,
    /// Namespaces asked for and not received yet.
    outstanding: usize,
    target: usize,
    /// The spawner's own network namespace, to return to after a clone.
    own: OwnedFd,
    factory: libc::pid_t,
}

fn open_own_netns() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/self/ns/net")?.into())
}

fn setns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns with a namespace descriptor; the spawner is single-threaded.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl NetnsPool {
    /// Forks the factory and asks it for `target` namespaces.
    ///
    /// # Safety
    /// The caller must be single-threaded (the factory is a fork).
    pub unsafe fn start(target: usize) -> io::Result<NetnsPool> {
        let own = open_own_netns()?;
        let (ours, theirs) = proto::seqpacket_pair()?;
        // SAFETY: the caller guarantees a single-threaded process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            let r = std::panic::catch_unwind(|| factory(theirs.as_raw_fd()));
            let _ = r;
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(1) };
        }
        drop(theirs);
        let mut pool = NetnsPool {
            sock: ours,
            ready: VecDeque::new(),
            outstanding: 0,
            target,
            own,
            factory: pid,
        };
        pool.refill();
        Ok(pool)
    }

    fn refill(&mut self) {
        while self.ready.len() + self.outstanding < self.target {
            if sys::write_all(self.sock.as_raw_fd(), b"n").is_err() {
                break;
            }
            self.outstanding += 1;
        }
    }

    /// Collects namespaces the factory has finished, without waiting.
    fn collect(&mut self) {
        while self.outstanding > 0 {
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd we own, without waiting.
            if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 || pfd.revents & libc::POLLIN == 0 {
                break;
            }
            match proto::recv::<()>(self.sock.as_fd()) {
                Ok(Some(((), mut fds))) if fds.len() == 1 => {
                    self.outstanding -= 1;
                    self.ready.push_back(fds.remove(0));
                }
                // The factory failed or died: stop asking, fall back to CLONE_NEWNET.
                _ => {
                    self.outstanding = 0;
                    self.target = 0;
                    break;
                }
            }
        }
    }

    /// A fresh namespace, if one is ready.
    pub fn take(&mut self) -> Option<OwnedFd> {
        self.collect();
        let ns = self.ready.pop_front();
        self.refill();
        ns
    }

    /// Enters `ns` (for the next clone).
    pub fn enter(&self, ns: &OwnedFd) -> io::Result<()> {
        setns(ns.as_raw_fd())
    }

    /// Returns to the spawner's own namespace.
    pub fn leave(&self) -> io::Result<()> {
        setns(self.own.as_raw_fd())
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(self.factory, libc::SIGKILL);
            libc::waitpid(self.factory, std::ptr::null_mut(), 0);
        }
    }
}

/// The factory: for every byte received, a new network namespace with loopback up, sent
/// back as a descriptor. Ends when the spawner goes away.
fn factory(sock: RawFd) -> io::Result<()> {
    sys::close_all_except(&[sock])?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)?;
    // SAFETY: `sock` is ours for the life of this process.
    let sock_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) };
    let mut b = [0u8; 1];
    loop {
        if sys::read_full(sock, &mut b)? == 0 {
            return Ok(());
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        crate::agent::loopback_up()?;
        let ns = open_own_netns()?;
        proto::send(sock_fd, &(), &[ns.as_raw_fd()])?;
    }
}

/// A jail's network namespace, seen from the host: to configure it and to make sockets in it
/// (sockets keep the namespace they were made in). Each operation runs on a short-lived
/// thread that enters only that namespace, so no other thread of the caller ever changes
/// namespace. The namespace belongs to the host's user namespace: programs in the jail cannot
/// undo what is done here.
#[derive(Debug)]
pub struct JailNet {
    /// A pidfd of the jail's agent (setns takes it for its namespaces).
    agent: OwnedFd,
}

impl JailNet {
    pub(crate) fn new(agent: OwnedFd) -> JailNet {
        JailNet { agent }
    }

    fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let agent = self.agent.try_clone()?;
        std::thread::Builder::new()
            .name("runcell-jail-netns".into())
            .spawn(move || {
                // SAFETY: setns on this thread only (network namespaces are per thread), with
                // a pidfd of the jail's agent; the thread ends right after.
                if unsafe { libc::setns(agent.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// Makes every address of `net/prefix` local to the namespace: a `local` route on its
    /// loopback (what `ip route add local NET/PREFIX dev lo` does).
    /// Done already (a session's jail, run again) is success.
    pub fn add_local_route(&self, net: std::net::Ipv4Addr, prefix: u8) -> io::Result<()> {
        match self.within(move || add_local_route(net, prefix)) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// A listening TCP socket on `addr` in the namespace.
    pub fn bind_tcp(&self, addr: std::net::SocketAddrV4) -> io::Result<std::net::TcpListener> {
        self.within(move || std::net::TcpListener::bind(addr))
    }

    /// A connection to `127.0.0.1:port` of the namespace (a program listening in the jail).
    pub fn connect_tcp(
        &self,
        port: u16,
        timeout: std::time::Duration,
    ) -> io::Result<std::net::TcpStream> {
        self.within(move || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&addr, timeout)
        })
    }

    /// A UDP socket on `addr` in the namespace.
    pub fn bind_udp(&self, addr: std::net::SocketAddrV4) -> io::Result<std::net::UdpSocket> {
        self.within(move || std::net::UdpSocket::bind(addr))
    }
}

/// `RTM_NEWROUTE` of type `local` for `net/prefix` on `lo`, in the calling thread's network
/// namespace, over rtnetlink.
fn add_local_route(net: std::net::Ipv4Addr, prefix: u8) -> io::Result<()> {
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new netlink socket, owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let msg = route_message(net, prefix, lo);
    sys::write_all(sock.as_raw_fd(), &msg)?;
    let mut buf = [0u8; 512];
    // SAFETY: read into a buffer we own, at most its length.
    let n = unsafe { libc::read(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // The acknowledgement: nlmsghdr (16) then nlmsgerr's error (i32, 0 = done).
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other("rtnetlink gave no acknowledgement"));
    }
    let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if errno != 0 {
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Ok(())
}

fn route_message(net: std::net::Ipv4Addr, prefix: u8, ifindex: u32) -> Vec<u8> {
    const RTM_NEWROUTE: u16 = 24;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RT_TABLE_LOCAL: u8 = 255;
    const RTPROT_BOOT: u8 = 3;
    const RT_SCOPE_HOST: u8 = 254;
    const RTN_LOCAL: u8 = 2;
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Vec::with_capacity(44);
    m.extend_from_slice(&44u32.to_ne_bytes());
    m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    m.extend_from_slice(&[
        libc::AF_INET as u8,
        prefix,
        0,
        0,
        RT_TABLE_LOCAL,
        RTPROT_BOOT,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&RTA_DST.to_ne_bytes());
    m.extend_from_slice(&net.octets());
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&RTA_OIF.to_ne_bytes());
    m.extend_from_slice(&ifindex.to_ne_bytes());
    debug_assert_eq!(m.len(), 44);
    m
}
