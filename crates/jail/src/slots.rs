//! Jail slots. A slot gives a jail its host uids/gids (unique to the slot, never used by
//! anything else on the host) and its cgroup name. Slots are claimed with open-file-description
//! byte-range locks on one lock file, so several runcell processes on one host never share a
//! slot, and a slot whose owner died (even by SIGKILL) is free again at once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The one slot lock file of the host. Every runcell process claims its slots here, whatever
/// its state directory: slot `n` means the same host uids and the same cgroup (`runcell/slot-n`)
/// to all of them, so two servers with different state directories must not count slots in
/// two files (each would hand out slots the other holds: two jails with one uid and one group).
pub const HOST_LOCK_FILE: &str = "/run/runcell/slots.lock";

/// First host uid (and gid) used for jails. Slot `n` uses `BASE + 2n` for the jail's agent
/// (uid 0 inside) and `BASE + 2n + 1` for the program (uid 1000 inside).
pub const DEFAULT_ID_BASE: u32 = 0x5f00_0000;

/// The host ids of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotIds {
    pub index: u32,
    /// Host uid/gid of uid 0 inside the jail (the jail's agent).
    pub agent: u32,
    /// Host uid/gid of uid 1000 inside the jail (the program).
    pub program: u32,
}

/// The slot table of one process.
#[derive(Debug)]
pub struct Slots {
    file: File,
    in_use: Vec<bool>,
    id_base: u32,
    next: u32,
}

fn ofd_lock(file: &File, index: u32, kind: libc::c_short) -> io::Result<bool> {
    let fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: index as libc::off_t,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: fcntl with a pointer to a properly initialised flock that outlives the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

impl Slots {
    /// Opens (creating) the lock file. `count` slots are available.
    pub fn open(lock_file: &Path, count: u32, id_base: u32) -> io::Result<Slots> {
        if count == 0 || (id_base as u64) + 2 * (count as u64) >= u32::MAX as u64 - 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "slot count and id base must fit below 2^32 - 2",
            ));
        }
        if let Some(dir) = lock_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(lock_file)?;
        let start = (std::process::id() % count.max(1)) as u32;
        Ok(Slots {
            file,
            in_use: vec![false; count as usize],
            id_base,
            next: start,
        })
    }

    fn ids(&self, index: u32) -> SlotIds {
        SlotIds {
            index,
            agent: self.id_base + 2 * index,
            program: self.id_base + 2 * index + 1,
        }
    }

    /// Claims a free slot.
    pub fn acquire(&mut self) -> io::Result<Option<SlotIds>> {
        let n = self.in_use.len() as u32;
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.in_use[i as usize] {
                continue;
            }
            if ofd_lock(&self.file, i, libc::F_WRLCK as libc::c_short)? {
                self.in_use[i as usize] = true;
                self.next = (i + 1) % n;
                return Ok(Some(self.ids(i)));
            }
        }
        Ok(None)
    }

    /// Claims slot `index` if nobody holds it (used to clean up after a dead owner).
    pub fn try_claim(&mut self, index: u32) -> io::Result<Option<SlotIds>> {
        if index as usize >= self.in_use.len() || self.in_use[index as usize] {
            return Ok(None);
        }
        if ofd_lock(&self.file, index, libc::F_WRLCK as libc::c_short)? {
            self.in_use[index as usize] = true;
            Ok(Some(self.ids(index)))
        } else {
            Ok(None)
        }
    }

    /// Gives a slot back.
    pub fn release(&mut self, index: u32) {
        if let Some(u) = self.in_use.get_mut(index as usize)
            && *u
        {
            let _ = ofd_lock(&self.file, index, libc::F_UNLCK as libc::c_short);
            *u = false;
        }
    }

    /// Slots held by this process.
    pub fn held(&self) -> usize {
        self.in_use.iter().filter(|u| **u).count()
    }

    /// The first host id of the slots' range (`2 * capacity` ids from there).
    pub fn id_base(&self) -> u32 {
        self.id_base
    }

    pub fn capacity(&self) -> u32 {
        self.in_use.len() as u32
    }
}

/// The cgroup name of a slot.
pub fn cgroup_name(index: u32) -> String {
    format!("slot-{index}")
}

/// The slot index of a cgroup name made by [`cgroup_name`].
pub fn parse_cgroup_name(name: &str) -> Option<u32> {
    name.strip_prefix("slot-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_across_open_file_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slots.lock");
        let mut a = Slots::open(&path, 2, 1000).unwrap();
        let mut b = Slots::open(&path, 2, 1000).unwrap();
        let s1 = a.acquire().unwrap().unwrap();
        let s2 = b.acquire().unwrap().unwrap();
        assert_ne!(s1.index, s2.index);
        assert!(b.acquire().unwrap().is_none(), "both slots are taken");
        assert!(a.acquire().unwrap().is_none());
        a.release(s1.index);
        let s3 = b.acquire().unwrap().unwrap();
        assert_eq!(s3.index, s1.index);
        assert_eq!(s3.agent, 1000 + 2 * s3.index);
        assert_eq!(s3.program, s3.agent + 1);
    }

    #[test]
    fn a_dropped_owner_frees_its_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slots.lock");
        let mut a = Slots::open(&path, 1, 1000).unwrap();
        a.acquire().unwrap().unwrap();
        let mut b = Slots::open(&path, 1, 1000).unwrap();
        assert!(b.try_claim(0).unwrap().is_none());
        drop(a);
        assert!(b.try_claim(0).unwrap().is_some());
    }

    #[test]
    fn cgroup_names_round_trip() {
        assert_eq!(parse_cgroup_name(&cgroup_name(17)), Some(17));
        assert_eq!(parse_cgroup_name("other"), None);
    }
}
