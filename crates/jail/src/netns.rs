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
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

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
