//! The seccomp filters every jailed program runs under.
//!
//! Three filters are stacked (the kernel runs all of them and the strictest answer wins):
//! 1. an ABI guard: any architecture but x86_64 (32-bit `int 0x80` calls) kills the process,
//!    and x32-ABI system call numbers fail with `ENOSYS`;
//! 2. a deny list answered with `EPERM` (kernel attack surface, other namespaces, mounting,
//!    tracing, keyrings, raw and exotic sockets, terminal injection);
//! 3. `clone3` answered with `ENOSYS`, because its flags live in memory a filter cannot
//!    inspect; C libraries then fall back to `clone`, whose flags the deny list checks.
//!
//! The filters are compiled before the program's process is forked and applied right before
//! `execve`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

use crate::error::JailError;

/// System calls a jailed program may never make (answered with `EPERM`).
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("process_madvise", libc::SYS_process_madvise),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("uselib", libc::SYS_uselib),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("personality", libc::SYS_personality),
];

/// Namespace flags that `clone` may not carry.
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Socket families a program may open.
const ALLOWED_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// `personality(2)` values that are allowed (query, and the default Linux persona).
const ALLOWED_PERSONALITIES: &[u64] = &[0, 0xffff_ffff];

/// Terminal ioctls that inject input into, or control, a terminal.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const DENIED_IOCTLS: &[u64] = &[TIOCSTI, TIOCLINUX];

/// Marks x32-ABI system call numbers.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond, JailError> {
    Cond::new(arg, len, op, value).map_err(|e| JailError::InvalidConfig(format!("seccomp: {e}")))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, JailError> {
    SeccompRule::new(conds).map_err(|e| JailError::InvalidConfig(format!("seccomp: {e}")))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
) -> Result<BpfProgram, JailError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, TargetArch::x86_64)
        .map_err(|e| JailError::InvalidConfig(format!("seccomp: {e}")))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| JailError::InvalidConfig(format!("seccomp: {e}")))
}

fn deny_list() -> Result<BpfProgram, JailError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (name, nr) in DENIED {
        if *name == "personality" {
            // Only other personas are denied; glibc and some runtimes query it.
            let conds = ALLOWED_PERSONALITIES
                .iter()
                .map(|v| cond(0, Len::Dword, Op::Ne, *v))
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(*nr, vec![rule(conds)?]);
        } else {
            rules.insert(*nr, vec![]);
        }
    }
    // clone with any namespace flag.
    let clone_rules = CLONE_NS_FLAGS
        .iter()
        .map(|f| rule(vec![cond(0, Len::Qword, Op::MaskedEq(*f), *f)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // socket: families outside the allow list; raw IP sockets.
    let mut socket_rules = vec![rule(
        ALLOWED_FAMILIES
            .iter()
            .map(|f| cond(0, Len::Dword, Op::Ne, *f))
            .collect::<Result<Vec<_>, _>>()?,
    )?];
    for family in [libc::AF_INET, libc::AF_INET6] {
        socket_rules.push(rule(vec![
            cond(0, Len::Dword, Op::Eq, family as u64)?,
            cond(1, Len::Dword, Op::MaskedEq(0xf), libc::SOCK_RAW as u64)?,
        ])?);
    }
    rules.insert(libc::SYS_socket, socket_rules);
    // socketpair outside AF_UNIX.
    rules.insert(
        libc::SYS_socketpair,
        vec![rule(vec![cond(
            0,
            Len::Dword,
            Op::Ne,
            libc::AF_UNIX as u64,
        )?])?],
    );
    rules.insert(
        libc::SYS_ioctl,
        DENIED_IOCTLS
            .iter()
            .map(|r| rule(vec![cond(1, Len::Dword, Op::Eq, *r)?]))
            .collect::<Result<Vec<_>, _>>()?,
    );
    compile(rules, SeccompAction::Errno(libc::EPERM as u32))
}

fn clone3_filter() -> Result<BpfProgram, JailError> {
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_clone3, vec![]);
    compile(rules, SeccompAction::Errno(libc::ENOSYS as u32))
}

// Classic BPF opcodes: class | operation | operand source.
/// `BPF_LD | BPF_W | BPF_ABS`.
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const BPF_JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JSET | BPF_K`.
const BPF_JMP_JSET_K: u16 = 0x45;
/// `BPF_RET | BPF_K`.
const BPF_RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn abi_guard() -> BpfProgram {
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The compiled filters, in the order they are applied.
pub fn filters() -> Result<Vec<BpfProgram>, JailError> {
    Ok(vec![abi_guard(), deny_list()?, clone3_filter()?])
}

/// Applies compiled filters to the calling thread (after `no_new_privs`).
pub fn apply(filters: &[BpfProgram]) -> Result<(), seccompiler::Error> {
    for f in filters {
        seccompiler::apply_filter(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the subset seccomp filters use, to check the policy
    /// exactly as the kernel will evaluate it.
    fn eval(prog: &[sock_filter], data: &[u8; 64]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; 16];
        let mut pc = 0usize;
        loop {
            let i = &prog[pc];
            pc += 1;
            let k = i.k;
            let word = |off: u32| {
                let o = off as usize;
                u32::from_ne_bytes(data[o..o + 4].try_into().unwrap())
            };
            match i.code & 0x07 {
                0x00 => {
                    a = match i.code & 0xe0 {
                        0x00 => k,
                        0x20 => word(k),
                        0x60 => mem[k as usize],
                        m => panic!("unsupported ld mode {m:#x}"),
                    }
                }
                0x01 => {
                    x = match i.code & 0xe0 {
                        0x00 => k,
                        0x60 => mem[k as usize],
                        m => panic!("unsupported ldx mode {m:#x}"),
                    }
                }
                0x02 => mem[k as usize] = a,
                0x03 => mem[k as usize] = x,
                0x04 => {
                    let v = if i.code & 0x08 != 0 { x } else { k };
                    a = match i.code & 0xf0 {
                        0x00 => a.wrapping_add(v),
                        0x10 => a.wrapping_sub(v),
                        0x40 => a | v,
                        0x50 => a & v,
                        0x60 => a << v,
                        0x70 => a >> v,
                        0xa0 => a ^ v,
                        op => panic!("unsupported alu op {op:#x}"),
                    }
                }
                0x05 => {
                    let v = if i.code & 0x08 != 0 { x } else { k };
                    let take = match i.code & 0xf0 {
                        0x00 => {
                            pc += k as usize;
                            continue;
                        }
                        0x10 => a == v,
                        0x20 => a > v,
                        0x30 => a >= v,
                        0x40 => a & v != 0,
                        op => panic!("unsupported jmp op {op:#x}"),
                    };
                    pc += if take { i.jt } else { i.jf } as usize;
                }
                0x06 => return if i.code & 0x10 != 0 { a } else { k },
                0x07 => {
                    if i.code & 0x80 != 0 {
                        a = x
                    } else {
                        x = a
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    /// What the kernel answers for a call: the strictest result of all filters.
    fn verdict(filters: &[BpfProgram], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        filters
            .iter()
            .map(|f| eval(f, &data))
            .min_by_key(|r| (r & 0xffff_0000) as i32)
            .unwrap()
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    fn x86(nr: i64, args: [u64; 6]) -> u32 {
        verdict(&filters().unwrap(), AUDIT_ARCH_X86_64, nr, args)
    }

    #[test]
    fn every_denied_call_gets_eperm() {
        for (name, nr) in DENIED {
            let args = if *name == "personality" {
                [8, 0, 0, 0, 0, 0]
            } else {
                [0; 6]
            };
            assert_eq!(x86(*nr, args), EPERM, "{name} must be denied");
        }
        assert_eq!(
            x86(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(x86(libc::SYS_personality, [0, 0, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_futex,
            libc::SYS_getrandom,
            libc::SYS_landlock_create_ruleset,
        ] {
            assert_eq!(x86(nr, [0; 6]), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn clone_with_namespace_flags_is_denied_and_threads_are_not() {
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(x86(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            x86(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            ALLOW
        );
        for f in CLONE_NS_FLAGS {
            assert_eq!(
                x86(libc::SYS_clone, [f | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
                EPERM
            );
        }
        // Namespace bits in the upper half of a 64-bit argument are not flags, but a set
        // bit anywhere in the low word is checked.
        assert_eq!(x86(libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    fn sockets_are_filtered_by_family_and_type() {
        let sock =
            |family: i32, ty: i32| x86(libc::SYS_socket, [family as u64, ty as u64, 0, 0, 0, 0]);
        assert_eq!(sock(libc::AF_INET, libc::SOCK_STREAM), ALLOW);
        assert_eq!(
            sock(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC),
            ALLOW
        );
        assert_eq!(sock(libc::AF_UNIX, libc::SOCK_STREAM), ALLOW);
        assert_eq!(sock(libc::AF_NETLINK, libc::SOCK_RAW), ALLOW);
        assert_eq!(sock(libc::AF_INET, libc::SOCK_RAW), EPERM);
        assert_eq!(
            sock(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_NONBLOCK),
            EPERM
        );
        assert_eq!(sock(libc::AF_PACKET, libc::SOCK_RAW), EPERM);
        assert_eq!(sock(libc::AF_VSOCK, libc::SOCK_STREAM), EPERM);
        assert_eq!(sock(libc::AF_ALG, libc::SOCK_SEQPACKET), EPERM);
        assert_eq!(
            x86(libc::SYS_socketpair, [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            x86(libc::SYS_socketpair, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
            ALLOW
        );
    }

    #[test]
    fn terminal_injection_is_denied() {
        assert_eq!(x86(libc::SYS_ioctl, [0, TIOCSTI, 0, 0, 0, 0]), EPERM);
        assert_eq!(x86(libc::SYS_ioctl, [0, TIOCLINUX, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            x86(libc::SYS_ioctl, [0, libc::TIOCGWINSZ, 0, 0, 0, 0]),
            ALLOW
        );
    }

    #[test]
    fn foreign_abis_are_refused() {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        // A 32-bit call (int 0x80) kills the process, whatever the number.
        assert_eq!(
            verdict(&filters().unwrap(), AUDIT_ARCH_I386, 20, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        // x32 numbers are refused.
        assert_eq!(
            x86(libc::SYS_getpid | X32_SYSCALL_BIT as i64, [0; 6]),
            ENOSYS
        );
        assert_eq!(x86(libc::SYS_getpid, [0; 6]), ALLOW);
    }

    #[test]
    fn deny_list_names_match_numbers() {
        // A typo in the table would deny the wrong call; check a few by number.
        let find = |n: &str| DENIED.iter().find(|(name, _)| *name == n).unwrap().1;
        assert_eq!(find("ptrace"), 101);
        assert_eq!(find("mount"), 165);
        assert_eq!(find("bpf"), 321);
        assert_eq!(find("io_uring_setup"), 425);
    }
}
