//! The host's CPUs, and keeping the server's own threads on a few of them.
//!
//! The server's threads hand every execution to one another (the HTTP runtime, the thread
//! that runs the jail, the store's writer, the pool's threads). Woken on another CPU, each
//! hand-off costs an inter-processor interrupt, which on a virtual machine is an exit to the
//! hypervisor: ≈ 20 µs of CPU here against ≈ 1 µs on the same CPU (docs/benchmarks.md,
//! "Hand-offs: one write per execution, the server's threads on one CPU"). `runcell serve` therefore keeps its own threads on
//! the first CPU per four it may use (`server_cpus = "auto"`), after the spawner has started:
//! the spawner, zygotes and jails keep every CPU.

use std::io;
use std::sync::OnceLock;

/// The CPUs this process could use when first asked (before the server confined its own
/// threads): what the jails have, what sizes the defaults and what usage is a share of.
pub fn host_cpus() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// The CPUs the calling thread may run on, in increasing order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills at most its
    // size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the set is ours and its size is passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Keeps the calling thread, and every thread it starts from now on, on `cpus`.
pub fn confine_to(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {c} is beyond the largest CPU number this build knows"),
            ));
        }
        // SAFETY: `c` is below CPU_SETSIZE, the set's capacity (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is ours and its size is passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs `spec` names among `allowed` (the CPUs this process may use, increasing):
/// `"auto"` the first one per four allowed (none to change on a single CPU), `"all"` none
/// to change, or a list (`"0"`, `"0-1,4"`) of which those allowed. `Ok(None)`: keep every
/// allowed CPU. An error is a sentence about the spec.
pub fn server_cpus(spec: &str, allowed: &[usize]) -> Result<Option<Vec<usize>>, String> {
    match spec.trim() {
        "all" => Ok(None),
        "auto" => {
            if allowed.len() <= 1 {
                return Ok(None);
            }
            Ok(Some(allowed[..(allowed.len() / 4).max(1)].to_vec()))
        }
        list => {
            let wanted = parse_cpu_list(list)?;
            let chosen: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|c| wanted.contains(c))
                .collect();
            if chosen.is_empty() {
                return Err(format!(
                    "server_cpus \"{list}\" names no CPU this process may use (it may use {})",
                    format_cpu_list(allowed)
                ));
            }
            Ok((chosen.len() < allowed.len()).then_some(chosen))
        }
    }
}

/// `"0-3,8,10-11"` as CPU numbers (the kernel's list format).
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let bad = || {
        format!(
            "server_cpus must be \"auto\", \"all\" or a list of CPU numbers such as \"0\" or \
             \"0-1,4\", not \"{list}\""
        )
    };
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// CPU numbers in the kernel's list format (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_first_cpu_per_four_and_never_a_single_one() {
        assert_eq!(server_cpus("auto", &[0]), Ok(None));
        assert_eq!(server_cpus("auto", &[0, 1]), Ok(Some(vec![0])));
        assert_eq!(server_cpus("auto", &[2, 3, 5]), Ok(Some(vec![2])));
        assert_eq!(
            server_cpus("auto", &(0..8).collect::<Vec<_>>()),
            Ok(Some(vec![0, 1]))
        );
        assert_eq!(server_cpus(" all ", &[0, 1]), Ok(None));
    }

    #[test]
    fn lists_keep_the_cpus_allowed_and_refuse_none() {
        assert_eq!(server_cpus("1", &[0, 1]), Ok(Some(vec![1])));
        assert_eq!(server_cpus("0-1,7", &[0, 1, 2]), Ok(Some(vec![0, 1])));
        assert_eq!(server_cpus("0-3", &[0, 1]), Ok(None));
        let e = server_cpus("4-5", &[0, 1]).unwrap_err();
        assert!(e.contains("names no CPU") && e.contains("0-1"), "{e}");
        for bad in ["", "x", "3-1", "1-", "-1", "0,,1", "99999"] {
            let e = server_cpus(bad, &[0, 1]).unwrap_err();
            assert!(e.contains("must be \"auto\""), "{bad}: {e}");
        }
    }

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(
            parse_cpu_list("0-3, 8,10-11,2"),
            Ok(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn the_calling_thread_can_be_confined() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert!(host_cpus() >= 1);
        std::thread::spawn(move || {
            confine_to(&allowed[..1]).unwrap();
            assert_eq!(allowed_cpus().unwrap(), allowed[..1].to_vec());
            // A thread started now inherits it.
            let inner = std::thread::spawn(allowed_cpus).join().unwrap().unwrap();
            assert_eq!(inner, allowed[..1].to_vec());
        })
        .join()
        .unwrap();
    }
}
